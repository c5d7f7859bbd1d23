//! The per-position arithmetic of the decoder measure ([`super::eval`]): for each next-token
//! prediction of the fine-tune, the delta-applied model and the base, the KL divergences, negative
//! log-likelihoods and top-1 agreements, summed; then the report. The choices for a base with a
//! smaller vocabulary are those stated in [`super::eval`].

use std::collections::BTreeSet;
use std::path::Path;

use zdn_protocol::Hash;

use super::eval::{
    Agreement, DecoderQualityReport, Perplexities, PositionAgreement, SpecialTokenAgreement, METRIC,
};

/// One next-token prediction of the three models.
pub(crate) struct Position<'a> {
    pub(crate) fine: &'a [f32],
    pub(crate) applied: &'a [f32],
    /// Over the base's (possibly smaller) vocabulary.
    pub(crate) base: &'a [f32],
    pub(crate) input: u32,
    pub(crate) next: u32,
    pub(crate) special: &'a BTreeSet<u32>,
}

/// Running sums over positions.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sums {
    positions: u64,
    nll_fine: f64,
    nll_applied: f64,
    kl_applied: f64,
    kl_base: f64,
    common: u64,
    common_nll: [f64; 3],
    top1_applied: u64,
    top1_base: u64,
    /// The union of the special-token kinds, then each kind.
    special: Tally,
    special_fine_correct: u64,
    after_special: Tally,
    special_next: Tally,
    fine_predicts_special: Tally,
}

/// Positions, and how many of them the applied model and the base agree with the fine-tune on.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    positions: u64,
    applied: u64,
    base: u64,
}

impl Tally {
    fn add(&mut self, applied_agrees: bool, base_agrees: bool) {
        self.positions += 1;
        self.applied += u64::from(applied_agrees);
        self.base += u64::from(base_agrees);
    }

    fn agreement(&self) -> PositionAgreement {
        let share = |a: u64| {
            if self.positions == 0 {
                f64::NAN
            } else {
                a as f64 / self.positions as f64
            }
        };
        PositionAgreement {
            positions: self.positions,
            applied: share(self.applied),
            base: share(self.base),
        }
    }
}

/// `log Σ exp(x)`, in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// Index of the largest value (the first of equals).
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sums {
    pub(crate) fn add(&mut self, p: &Position<'_>) {
        let vb = p.base.len();
        let (lf, la, lb) = (
            log_sum_exp(p.fine),
            log_sum_exp(p.applied),
            log_sum_exp(p.base),
        );
        let next = p.next as usize;
        self.positions += 1;
        self.nll_fine += lf - p.fine[next] as f64;
        self.nll_applied += la - p.applied[next] as f64;
        // KL(f ‖ a) = Σ pf (log pf − log pa); KL over the base's ids with pf renormalised there.
        let mut kl_a = 0.0;
        let mut kl_b = 0.0;
        let mut mass_b = 0.0;
        for v in 0..p.fine.len() {
            let lpf = p.fine[v] as f64 - lf;
            let pf = lpf.exp();
            kl_a += pf * (lpf - (p.applied[v] as f64 - la));
            if v < vb {
                mass_b += pf;
                kl_b += pf * (lpf - (p.base[v] as f64 - lb));
            }
        }
        self.kl_applied += kl_a;
        // Σ p' (log p' − log pb) with p' = pf / Z: (Σ pf (log pf − log pb)) / Z − log Z.
        self.kl_base += kl_b / mass_b - mass_b.ln();
        if next < vb {
            self.common += 1;
            self.common_nll[0] += lf - p.fine[next] as f64;
            self.common_nll[1] += la - p.applied[next] as f64;
            self.common_nll[2] += lb - p.base[next] as f64;
        }
        let (tf, ta, tb) = (argmax(p.fine), argmax(p.applied), argmax(p.base));
        self.top1_applied += u64::from(ta == tf);
        self.top1_base += u64::from(tb == tf);
        let after = p.special.contains(&p.input);
        let special_next = p.special.contains(&p.next);
        let predicts = p.special.contains(&(tf as u32));
        let agree = (ta == tf, tb == tf);
        for (kind, tally) in [
            (after, &mut self.after_special),
            (special_next, &mut self.special_next),
            (predicts, &mut self.fine_predicts_special),
            (after || special_next || predicts, &mut self.special),
        ] {
            if kind {
                tally.add(agree.0, agree.1);
            }
        }
        if after || special_next || predicts {
            self.special_fine_correct += u64::from(tf == next);
        }
    }

    pub(crate) fn report(&self, c: ReportContext<'_>) -> DecoderQualityReport {
        let share = |a: u64, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                a as f64 / n as f64
            }
        };
        let ppl = |nll: f64, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                (nll / n as f64).exp()
            }
        };
        let common = Perplexities {
            finetuned: ppl(self.common_nll[0], self.common),
            applied: ppl(self.common_nll[1], self.common),
            base: ppl(self.common_nll[2], self.common),
        };
        DecoderQualityReport {
            metric: METRIC.to_owned(),
            corpus: c
                .corpus
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            corpus_blake3: c.corpus_blake3,
            conversations: c.conversations,
            truncated: c.truncated,
            max_tokens: c.max_tokens,
            positions: self.positions,
            base_vocab: c.base_vocab,
            finetuned_vocab: c.finetuned_vocab,
            base_input_substitutions: c.base_input_substitutions,
            kl_finetuned_applied: self.kl_applied / self.positions.max(1) as f64,
            kl_finetuned_base: self.kl_base / self.positions.max(1) as f64,
            perplexity_finetuned: ppl(self.nll_fine, self.positions),
            perplexity_applied: ppl(self.nll_applied, self.positions),
            common_positions: self.common,
            gain_kept: (common.base - common.applied) / (common.base - common.finetuned),
            log_gain_kept: (common.base.ln() - common.applied.ln())
                / (common.base.ln() - common.finetuned.ln()),
            common_perplexity: common,
            top1_agreement: Agreement {
                applied: share(self.top1_applied, self.positions),
                base: share(self.top1_base, self.positions),
            },
            special_tokens: SpecialTokenAgreement {
                positions: self.special.positions,
                applied: self.special.agreement().applied,
                base: self.special.agreement().base,
                finetuned_correct: share(self.special_fine_correct, self.special.positions),
                after_special: self.after_special.agreement(),
                special_next: self.special_next.agreement(),
                finetuned_predicts_special: self.fine_predicts_special.agreement(),
            },
            delta_bytes: c.delta_bytes,
            finetuned_bytes: c.finetuned_bytes,
        }
    }
}

pub(crate) struct ReportContext<'a> {
    pub(crate) corpus: &'a Path,
    pub(crate) corpus_blake3: Hash,
    pub(crate) conversations: usize,
    pub(crate) truncated: usize,
    pub(crate) max_tokens: usize,
    pub(crate) base_vocab: usize,
    pub(crate) finetuned_vocab: usize,
    pub(crate) base_input_substitutions: u64,
    pub(crate) delta_bytes: Option<u64>,
    pub(crate) finetuned_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos<'a>(
        fine: &'a [f32],
        applied: &'a [f32],
        base: &'a [f32],
        input: u32,
        next: u32,
        special: &'a BTreeSet<u32>,
    ) -> Position<'a> {
        Position {
            fine,
            applied,
            base,
            input,
            next,
            special,
        }
    }

    /// KL, perplexity and agreement against values worked out by hand.
    #[test]
    fn sums_match_hand_computed_values() {
        let none = BTreeSet::new();
        let mut s = Sums::default();
        // Identical distributions: KL 0; uniform over 4: perplexity 4.
        let u = [0.0f32; 4];
        s.add(&pos(&u, &u, &u, 0, 1, &none));
        let r = s.report(ctx());
        assert!(r.kl_finetuned_applied.abs() < 1e-12);
        assert!(r.kl_finetuned_base.abs() < 1e-12);
        assert!((r.perplexity_finetuned - 4.0).abs() < 1e-9);
        // Fine-tune p = (1/2, 1/2) over ids 0, 1 (logits 0, 0, −∞…); applied (1/4, 3/4).
        let mut s = Sums::default();
        let f = [0.0f32, 0.0];
        let a = [0.0f32, 3f32.ln()];
        s.add(&pos(&f, &a, &f, 0, 1, &none));
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        let r = s.report(ctx());
        assert!(
            (r.kl_finetuned_applied - want).abs() < 1e-7,
            "{}",
            r.kl_finetuned_applied
        );
        assert!((r.perplexity_applied - 4.0 / 3.0).abs() < 1e-6);
        // The fine-tune's top-1 is id 0 (the first of equals), the applied model's id 1.
        assert_eq!(r.top1_agreement.applied, 0.0);
        assert_eq!(r.top1_agreement.base, 1.0);
    }

    /// The base's smaller vocabulary: KL over its ids with the fine-tune renormalised there, and
    /// positions whose next token it lacks left out of the common perplexity.
    #[test]
    fn a_smaller_base_vocabulary_is_handled_as_documented() {
        let special: BTreeSet<u32> = [2].into_iter().collect();
        let mut s = Sums::default();
        // Fine-tune: ids 0, 1, 2 with p = 1/4, 1/4, 1/2; the base has ids 0, 1 only, p = 1/2, 1/2.
        let f = [0.0f32, 0.0, 2f32.ln()];
        let b = [0.0f32, 0.0];
        s.add(&pos(&f, &f, &b, 0, 2, &special));
        s.add(&pos(&f, &f, &b, 2, 0, &special));
        let r = s.report(ctx());
        // Restricted and renormalised, the fine-tune is (1/2, 1/2) = the base: KL 0.
        assert!(r.kl_finetuned_base.abs() < 1e-7, "{}", r.kl_finetuned_base);
        assert_eq!(r.positions, 2);
        assert_eq!(r.common_positions, 1);
        assert!((r.common_perplexity.base - 2.0).abs() < 1e-6);
        assert!((r.common_perplexity.finetuned - 4.0).abs() < 1e-6);
        // The applied model is the fine-tune here: all of the gain, in either measure.
        assert_eq!((r.gain_kept, r.log_gain_kept), (1.0, 1.0));
        // Both positions involve the special id 2: next (first), input (second), and the fine-tune
        // predicts it at both; the base can never agree.
        let st = r.special_tokens;
        assert_eq!(st.positions, 2);
        assert_eq!(st.after_special.positions, 1);
        assert_eq!(st.special_next.positions, 1);
        assert_eq!(st.finetuned_predicts_special.positions, 2);
        assert_eq!(st.special_next.base, 0.0);
        assert_eq!((st.applied, st.base, st.finetuned_correct), (1.0, 0.0, 0.5));
    }

    fn ctx() -> ReportContext<'static> {
        ReportContext {
            corpus: Path::new("held.jsonl"),
            corpus_blake3: Hash::ZERO,
            conversations: 1,
            truncated: 0,
            max_tokens: 8,
            base_vocab: 2,
            finetuned_vocab: 3,
            base_input_substitutions: 0,
            delta_bytes: None,
            finetuned_bytes: 0,
        }
    }
}

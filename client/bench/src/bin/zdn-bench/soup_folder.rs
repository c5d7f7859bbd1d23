//! `soup-folder`: a soup of two folder deltas of a Llama-2-7B-shaped folder (real widths,
//! `--layers` of the 32, the same added tokens in both fine-tunes) through the real CLI: `delta
//! encode` of each fine-tune, `add` of the base and of both deltas, `apply` of one delta (the
//! reference: one component), `soup mix -o` of both at 0.5/0.5 and `apply` of the stored soup.
//! Peak RSS and wall time of each child: what mixing costs beyond rebuilding one delta.

use std::collections::BTreeMap;

use super::folder::{largest_tensor_bytes, write_folder, FolderArgs};
use super::folder_facts::{folder_facts, FileFacts};
use super::*;

#[derive(Debug, Clone, Serialize)]
pub(super) struct SoupFolderReport {
    layers: u32,
    /// Bytes of the largest tensor (at Llama-2 widths the vocabulary matrices, added rows
    /// included).
    largest_tensor_bytes: u64,
    chunk_size: Option<u32>,
    runs: Vec<SoupRun>,
    /// The soup's folder has the applied delta's files (paths and lengths).
    same_files_as_apply: bool,
    /// `zdn apply SOUP` wrote the folder `soup mix -o` wrote, byte for byte.
    apply_of_the_soup_identical: bool,
    /// Tensor bytes of the soup that differ from the applied delta's (it is a mix, not a copy).
    files_differing_from_apply: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct SoupRun {
    step: &'static str,
    #[serde(flatten)]
    child: ChildRun,
}

/// Runs `zdn args…` as `step`, recording its wall time and peak RSS.
struct Runner<'a> {
    zdn: &'a Path,
    a: &'a FolderArgs,
    say: bool,
    runs: Vec<SoupRun>,
}

impl Runner<'_> {
    fn run(&mut self, step: &'static str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<()> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|x| x.as_ref()).collect();
        let out = self.a.dir.join("step.out");
        let child = run_child(self.zdn, &args, &out, self.a.method)?;
        if self.say {
            let rss = mib(child.peak_rss_bytes);
            eprintln!("{step}: {:.1} s, peak RSS {rss:.0} MiB", child.wall_s);
        }
        self.runs.push(SoupRun { step, child });
        Ok(())
    }
}

pub(super) fn bench_soup_folder(a: &FolderArgs, say: bool) -> Result<SoupFolderReport> {
    let zdn = zdn_path(a.zdn.as_deref())?;
    let dir = &a.dir;
    write_inputs(a, say)?;
    let p = |name: &str| dir.join(name);
    let mut r = Runner {
        zdn: &zdn,
        a,
        say,
        runs: Vec::new(),
    };
    let home = p("home");
    let (base, ft1, ft2) = (p("base"), p("ft-1"), p("ft-2"));
    let (d1, d2) = (p("ft-1.delta"), p("ft-2.delta"));
    let enc = |fine, delta| -> [&dyn AsRef<std::ffi::OsStr>; 8] {
        [
            &"delta",
            &"encode",
            &"--base",
            &base,
            &"--finetuned",
            fine,
            &"-o",
            delta,
        ]
    };
    r.run("encode ft-1", &enc(&ft1, &d1))?;
    r.run("encode ft-2", &enc(&ft2, &d2))?;
    std::fs::remove_dir_all(&ft1)?;
    std::fs::remove_dir_all(&ft2)?;
    let chunk = a.chunk_size.unwrap_or(1 << 20).to_string();
    let (h, c) = (&home, &chunk);
    r.run(
        "add base",
        &[
            &"add",
            &base,
            &"--home",
            h,
            &"--chunk-size",
            c,
            &"--name",
            &"base",
        ],
    )?;
    for (step, delta, name) in [("add ft-1", &d1, &"ft-1"), ("add ft-2", &d2, &"ft-2")] {
        r.run(
            step,
            &[
                &"add",
                delta,
                &"--home",
                h,
                &"--chunk-size",
                c,
                &"--base",
                &"base",
                &"--name",
                name,
            ],
        )?;
    }
    let (applied, soup, again) = (p("applied"), p("soup"), p("soup-again"));
    r.run(
        "apply ft-1",
        &[&"apply", &"ft-1", &"-o", &applied, &"--home", &home],
    )?;
    r.run(
        "soup mix -o",
        &[
            &"soup",
            &"mix",
            &"--delta",
            &"ft-1:0.5",
            &"--delta",
            &"ft-2:0.5",
            &"--name",
            &"mix",
            &"-o",
            &soup,
            &"--home",
            &home,
        ],
    )?;
    r.run(
        "apply soup",
        &[&"apply", &"mix", &"-o", &again, &"--home", &home],
    )?;
    let report = compare(a, [&applied, &soup, &again], r.runs)?;
    if !a.keep {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(report)
}

/// The base and two fine-tunes, in a fresh `a.dir`.
fn write_inputs(a: &FolderArgs, say: bool) -> Result<()> {
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    std::fs::create_dir_all(&a.dir)?;
    if say {
        eprintln!(
            "writing the base and two fine-tunes under {}",
            a.dir.display()
        );
    }
    for (name, variant) in [("base", 0), ("ft-1", 1), ("ft-2", 2)] {
        write_folder(a, &a.dir.join(name), variant)?;
    }
    Ok(())
}

/// The report: the soup's folder against the applied delta's, and `zdn apply`'s of the soup.
fn compare(
    a: &FolderArgs,
    [applied, soup, again]: [&Path; 3],
    runs: Vec<SoupRun>,
) -> Result<SoupFolderReport> {
    let (fa, fs, fg) = (
        folder_facts(applied)?,
        folder_facts(soup)?,
        folder_facts(again)?,
    );
    let lens = |f: &BTreeMap<String, FileFacts>| -> Vec<(String, u64)> {
        f.iter().map(|(k, v)| (k.clone(), v.len)).collect()
    };
    let report = SoupFolderReport {
        layers: a.layers,
        largest_tensor_bytes: largest_tensor_bytes(a),
        chunk_size: a.chunk_size,
        same_files_as_apply: lens(&fa) == lens(&fs),
        apply_of_the_soup_identical: fs == fg,
        files_differing_from_apply: fs.iter().filter(|(k, v)| fa.get(*k) != Some(v)).count(),
        runs,
    };
    Ok(report)
}

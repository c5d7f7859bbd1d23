//! The scenario file's `[link] rate_changes`: parsed, checked, and refused with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::spec::Scenario;

fn scenario(link_extra: &str, lan: &str) -> String {
    format!(
        r#"
[link]
rate = "1mbit"
delay = "300ms"
{link_extra}
{lan}
[[node]]
name = "dc"
place = "datacenter"
[[node]]
name = "st"
place = "station"
"#
    )
}

fn error(text: &str) -> String {
    Scenario::parse("t.toml", text).unwrap_err().to_string()
}

#[test]
fn rate_changes_parse_in_order() {
    let s = Scenario::parse(
        "t.toml",
        &scenario(r#"rate_changes = ["60s:500kbit", "120s:1mbit"]"#, ""),
    )
    .unwrap();
    let got: Vec<(Duration, u64)> = s.rate_changes.iter().map(|c| (c.at, c.rate_bps)).collect();
    assert_eq!(
        got,
        vec![
            (Duration::from_secs(60), 500_000),
            (Duration::from_secs(120), 1_000_000)
        ]
    );
    let none = Scenario::parse("t.toml", &scenario("", "")).unwrap();
    assert!(none.rate_changes.is_empty());
}

#[test]
fn bad_rate_changes_are_refused_with_the_reason() {
    let e = error(&scenario(r#"rate_changes = ["60s"]"#, ""));
    assert!(e.contains("[link]") && e.contains("AT:RATE"), "{e}");
    let e = error(&scenario(r#"rate_changes = ["60s:0"]"#, ""));
    assert!(e.contains("\"60s:0\""), "{e}");
    let e = error(&scenario(r#"rate_changes = ["soon:1mbit"]"#, ""));
    assert!(e.contains("soon"), "{e}");
    let e = error(&scenario(
        r#"rate_changes = ["2m:1mbit", "60s:500kbit"]"#,
        "",
    ));
    assert!(e.contains("out of order"), "{e}");
    let e = error(&scenario(
        r#"rate_changes = ["60s:1mbit", "60s:500kbit"]"#,
        "",
    ));
    assert!(e.contains("out of order"), "{e}");
    let e = error(&scenario(r#"rate_changes = "60s:1mbit""#, ""));
    assert!(e.contains("rate_changes"), "{e}");
    let e = error(&scenario(
        "",
        "[lan]\nrate = \"100mbit\"\nrate_changes = [\"1s:1mbit\"]\n",
    ));
    assert!(e.contains("[lan]") && e.contains("satellite"), "{e}");
}

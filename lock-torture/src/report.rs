//! The campaign's table: one row per backend and fault.

use std::fmt::Write;

use crate::campaign::Outcome;

/// The Markdown table of `outcomes`, with a totals line per backend.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| backend | fault | injected | grants | overlaps | token regressions | register regressions | \
         stale writes rejected | longest recovery | longest grant gap | missed recoveries | writes after death | leftovers |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for outcome in outcomes {
        for (fault, found) in &outcome.faults {
            let seconds = |ns: Option<u64>| ns.map_or_else(|| "—".to_owned(), |ns| format!("{:.2} s", ns as f64 / 1e9));
            let (recovery, gap) = (seconds(found.longest_recovery), seconds(found.longest_gap));
            let _ = writeln!(
                out,
                "| {} | {fault} | {} | {} | {} | {} | {} | {} | {recovery} | {gap} | {} | {} | |",
                outcome.backend,
                found.faults,
                found.grants,
                found.overlaps,
                found.token_regressions,
                found.register_regressions,
                found.stale_rejected,
                found.missed_recoveries,
                found.writes_after_death,
            );
        }
        for (fault, why) in &outcome.skipped {
            let _ = writeln!(out, "| {} | {fault} | not injected: {why} | | | | | | | | | | |", outcome.backend);
        }
        let _ = writeln!(
            out,
            "| {} | **run** ({:.0} s) | | {} | {} | {} | {} | {} | | | {} | {} | {} |",
            outcome.backend,
            outcome.ran.as_secs_f64(),
            outcome.faults.iter().map(|(_, f)| f.grants).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.overlaps).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.token_regressions).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.register_regressions).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.stale_rejected).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.missed_recoveries).sum::<usize>(),
            outcome.faults.iter().map(|(_, f)| f.writes_after_death).sum::<usize>(),
            outcome.leftovers,
        );
    }
    out
}

/// How many violations `outcomes` show in all (leftovers included).
pub fn violations(outcomes: &[Outcome]) -> usize {
    outcomes.iter().map(|o| o.leftovers + o.faults.iter().map(|(_, f)| f.violations()).sum::<usize>()).sum()
}

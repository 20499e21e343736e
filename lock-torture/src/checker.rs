//! The checker: reads a merged history and counts every violation of the
//! lock's contract it shows, per fault window.

use std::collections::HashMap;

use crate::history::{Event, Kind};

/// What one window of the history (the calm start, or one fault until the
/// next) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Grants recorded.
    pub grants: usize,
    /// Faults injected.
    pub faults: usize,
    /// Accepted writes whose token was already superseded by a grant of the
    /// same key before the write arrived: two holders acting at once.
    pub overlaps: usize,
    /// Grants of a key whose token was not greater than the key's previous
    /// grant's.
    pub token_regressions: usize,
    /// Writes the register accepted with a token lower than one it had
    /// accepted before (the register's own check failing).
    pub register_regressions: usize,
    /// Writes the register refused as stale: what fencing stopped.
    pub stale_rejected: usize,
    /// The longest time from a fault's healing to the next grant, in ns.
    pub longest_recovery: Option<u64>,
    /// The longest time between two grants of any key, in ns: how long the
    /// fault kept every worker from the lock, heal or no heal (a stall the
    /// recovery time does not show when it ends before the heal).
    pub longest_gap: Option<u64>,
    /// Heals not followed by a grant within the bound (while the run went on
    /// long enough to see one).
    pub missed_recoveries: usize,
    /// Writes the register received from a worker incarnation more than
    /// [`DEATH_GRACE`] after the campaign saw it (and in exec mode its
    /// `distlock exec`) dead: a guarded command that outlived its supervisor
    /// and went on acting on a lock nobody renews.
    pub writes_after_death: usize,
}

/// How long after a worker incarnation was seen dead a write of its may
/// still arrive: one already on its way to the register when the process
/// died (the campaign notes the death only after it has polled the process
/// gone, so this is slack for the register's own reading).
pub const DEATH_GRACE: u64 = 500_000_000;

impl Findings {
    /// Whether the window broke the contract.
    pub fn violations(&self) -> usize {
        self.overlaps
            + self.token_regressions
            + self.register_regressions
            + self.missed_recoveries
            + self.writes_after_death
    }

    fn add(&mut self, other: &Findings) {
        self.grants += other.grants;
        self.faults += other.faults;
        self.overlaps += other.overlaps;
        self.token_regressions += other.token_regressions;
        self.register_regressions += other.register_regressions;
        self.stale_rejected += other.stale_rejected;
        self.longest_recovery = self.longest_recovery.max(other.longest_recovery);
        self.longest_gap = self.longest_gap.max(other.longest_gap);
        self.missed_recoveries += other.missed_recoveries;
        self.writes_after_death += other.writes_after_death;
    }
}

/// Checks `events` (sorted by time); windows are named by the fault that
/// opens them (`calm` before the first). A grant must follow each heal within
/// `recovery_bound(fault)` ns, checked for heals at least that long before
/// the end.
pub fn check(events: &[Event], recovery_bound: impl Fn(&str) -> u64) -> Vec<(String, Findings)> {
    let mut windows: Vec<(String, Findings)> = vec![("calm".to_owned(), Findings::default())];
    let mut superseded: HashMap<&str, u64> = HashMap::new();
    let mut last_grant: HashMap<&str, u64> = HashMap::new();
    let mut last_accepted: HashMap<&str, u64> = HashMap::new();
    // Per worker, the key it holds; a fault on a holder is healed when its
    // key is granted again (a fault on a worker that held nothing, or on the
    // server, when any key is).
    let mut holding: HashMap<&str, &str> = HashMap::new();
    let mut fault_key: Option<&str> = None;
    let mut awaiting_grant: Vec<(usize, u64, Option<&str>)> = Vec::new();
    // Per writer id (`w1#2`), when that incarnation was seen dead.
    let mut died_at: HashMap<String, u64> = HashMap::new();
    let mut previous_grant: Option<u64> = None;
    let end = events.last().map_or(0, |e| e.at);
    for event in events {
        let current = windows.len() - 1;
        match &event.kind {
            Kind::Fault { fault, target } => {
                windows.push((fault.clone(), Findings { faults: 1, ..Findings::default() }));
                fault_key = holding.get(target.as_str()).copied();
            }
            Kind::Healed { .. } => awaiting_grant.push((current, event.at, fault_key.take())),
            Kind::Started { .. } => {
                holding.remove(event.by.as_str());
            }
            Kind::Died { worker, incarnation } => {
                holding.remove(worker.as_str());
                died_at.insert(crate::worker::writer_id(worker, *incarnation), event.at);
            }
            Kind::Released { .. } | Kind::Lost { .. } => {
                holding.remove(event.by.as_str());
            }
            Kind::Granted { key, token } => {
                holding.insert(&event.by, key);
                let findings = &mut windows[current].1;
                findings.grants += 1;
                if let Some(previous) = previous_grant.replace(event.at) {
                    findings.longest_gap = findings.longest_gap.max(Some(event.at.saturating_sub(previous)));
                }
                if last_grant.get(key.as_str()).is_some_and(|last| token <= last) {
                    findings.token_regressions += 1;
                }
                last_grant.insert(key, *token);
                let top = superseded.entry(key).or_insert(0);
                *top = (*top).max(*token);
                let (recovered, waiting): (Vec<_>, Vec<_>) =
                    awaiting_grant.drain(..).partition(|(_, _, held)| held.is_none_or(|held| held == key));
                awaiting_grant = waiting;
                for (window, healed_at, _) in recovered {
                    let recovery = event.at.saturating_sub(healed_at);
                    let bound = recovery_bound(&windows[window].0);
                    let findings = &mut windows[window].1;
                    findings.longest_recovery = findings.longest_recovery.max(Some(recovery));
                    if recovery > bound {
                        findings.missed_recoveries += 1;
                    }
                }
            }
            Kind::Write { key, token, accepted, worker } => {
                let findings = &mut windows[current].1;
                if died_at.get(worker).is_some_and(|died| event.at > died + DEATH_GRACE) {
                    findings.writes_after_death += 1;
                }
                if !accepted {
                    findings.stale_rejected += 1;
                    continue;
                }
                if superseded.get(key.as_str()).is_some_and(|top| token < top) {
                    findings.overlaps += 1;
                }
                if last_accepted.get(key.as_str()).is_some_and(|last| token < last) {
                    findings.register_regressions += 1;
                }
                last_accepted.insert(key, *token);
            }
            _ => {}
        }
    }
    for (window, healed_at, _) in awaiting_grant {
        if end.saturating_sub(healed_at) >= recovery_bound(&windows[window].0) {
            windows[window].1.missed_recoveries += 1;
        }
    }
    windows
}

/// The findings of every window with the same fault name, added up, in the
/// order the faults first appear.
pub fn by_fault(windows: &[(String, Findings)]) -> Vec<(String, Findings)> {
    let mut merged: Vec<(String, Findings)> = Vec::new();
    for (name, findings) in windows {
        match merged.iter_mut().find(|(known, _)| known == name) {
            Some((_, total)) => total.add(findings),
            None => merged.push((name.clone(), findings.clone())),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: u64, by: &str, kind: Kind) -> Event {
        Event { at, by: by.to_owned(), kind }
    }

    fn granted(t: u64, by: &str, token: u64) -> Event {
        at(t, by, Kind::Granted { key: "k".into(), token })
    }

    fn write(t: u64, by: &str, token: u64, accepted: bool) -> Event {
        at(t, "register", Kind::Write { key: "k".into(), token, worker: by.into(), accepted })
    }

    fn total(events: &[Event]) -> Findings {
        let mut sum = Findings::default();
        for (_, findings) in check(events, |_| 1_000) {
            sum.add(&findings);
        }
        sum
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let events = [granted(1, "a", 5), write(2, "a", 5, true), granted(3, "b", 6), write(4, "b", 6, true)];
        let found = total(&events);
        assert_eq!((found.grants, found.violations()), (2, 0));
    }

    #[test]
    fn a_write_after_a_newer_grant_is_an_overlap() {
        // b was granted 6 while a, holding 5, had not stopped: its write lands.
        let events = [granted(1, "a", 5), granted(3, "b", 6), write(4, "a", 5, true)];
        assert_eq!(total(&events).overlaps, 1);
    }

    #[test]
    fn a_stale_write_refused_is_counted_not_an_overlap() {
        let events = [granted(1, "a", 5), granted(3, "b", 6), write(4, "b", 6, true), write(5, "a", 5, false)];
        let found = total(&events);
        assert_eq!((found.overlaps, found.stale_rejected), (0, 1));
    }

    #[test]
    fn a_token_that_does_not_increase_is_a_regression() {
        let events = [granted(1, "a", 5), granted(3, "b", 5), granted(4, "a", 4)];
        assert_eq!(total(&events).token_regressions, 2);
    }

    #[test]
    fn a_register_accepting_a_lower_token_is_caught() {
        let events = [write(1, "b", 6, true), write(2, "a", 5, true)];
        assert_eq!(total(&events).register_regressions, 1);
    }

    #[test]
    fn recovery_is_measured_from_the_heal_and_a_missing_one_is_caught() {
        let fault = |t| at(t, "nemesis", Kind::Fault { fault: "cut".into(), target: "w1".into() });
        let healed = |t| at(t, "nemesis", Kind::Healed { fault: "cut".into() });
        let recovered = [fault(1), healed(10), granted(500, "a", 1)];
        let windows = check(&recovered, |_| 1_000);
        assert_eq!(windows[1].1.longest_recovery, Some(490));
        assert_eq!(windows[1].1.violations(), 0);
        let late = [fault(1), healed(10), granted(2_000, "a", 1)];
        assert_eq!(total(&late).missed_recoveries, 1);
        let never = [fault(1), healed(10), at(5_000, "w1", Kind::Started { pid: 1 })];
        assert_eq!(total(&never).missed_recoveries, 1);
    }

    #[test]
    fn a_fault_on_a_holder_recovers_when_its_key_is_granted_again() {
        let other = |t, token| at(t, "b", Kind::Granted { key: "other".into(), token });
        let events = [
            granted(1, "a", 1),
            at(2, "nemesis", Kind::Fault { fault: "kill".into(), target: "a".into() }),
            at(3, "nemesis", Kind::Died { worker: "a".into(), incarnation: 0 }),
            at(4, "nemesis", Kind::Healed { fault: "kill".into() }),
            other(5, 1),
            granted(700, "c", 2),
        ];
        let windows = check(&events, |_| 1_000);
        // Not the grant of another key at 5: the killed holder's key at 700.
        assert_eq!(windows[1].1.longest_recovery, Some(696));
    }

    #[test]
    fn each_fault_is_held_to_its_own_recovery_bound() {
        let fault = |t, name: &str| at(t, "nemesis", Kind::Fault { fault: name.into(), target: "server".into() });
        let healed = |t, name: &str| at(t, "nemesis", Kind::Healed { fault: name.into() });
        let events = [fault(1, "leader-kill"), healed(10, "leader-kill"), granted(3_000, "a", 1)];
        let bound = |fault: &str| if fault == "leader-kill" { 5_000 } else { 1_000 };
        assert_eq!(check(&events, bound)[1].1.missed_recoveries, 0);
        assert_eq!(check(&events, |_| 1_000)[1].1.missed_recoveries, 1);
    }

    #[test]
    fn a_write_from_an_incarnation_seen_dead_is_caught_after_the_grace() {
        let died = |t| at(t, "nemesis", Kind::Died { worker: "a".into(), incarnation: 0 });
        let late = DEATH_GRACE + 10;
        // Its command outlived it and wrote on.
        let orphan = [granted(1, "a", 5), write(2, "a#0", 5, true), died(3), write(late, "a#0", 5, true)];
        assert_eq!(total(&orphan).writes_after_death, 1);
        // A write already on its way, and the next incarnation's writes.
        let fine = [granted(1, "a", 5), died(3), write(4, "a#0", 5, true), write(late, "a#1", 6, true)];
        assert_eq!(total(&fine).writes_after_death, 0);
    }

    #[test]
    fn the_longest_gap_between_grants_is_kept_per_window() {
        let fault = at(10, "nemesis", Kind::Fault { fault: "leader-kill".into(), target: "server".into() });
        let events = [granted(1, "a", 1), granted(5, "b", 2), fault, granted(15, "a", 3), granted(95, "b", 4)];
        let windows = check(&events, |_| 1_000);
        assert_eq!((windows[0].1.longest_gap, windows[1].1.longest_gap), (Some(4), Some(80)));
    }

    #[test]
    fn windows_of_one_fault_add_up() {
        let fault = |t| at(t, "nemesis", Kind::Fault { fault: "kill".into(), target: "w1".into() });
        let events = [granted(1, "a", 1), fault(2), granted(3, "a", 2), fault(4), granted(5, "b", 3)];
        let merged = by_fault(&check(&events, |_| 1_000));
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[1].0.as_str(), merged[1].1.grants, merged[1].1.faults), ("kill", 2, 2));
    }
}

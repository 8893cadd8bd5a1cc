//! What the alarm table answers about zones and conditions: read-only queries that the engine
//! (votes, blind zones, restore), the metrics and the retained zone status ask. Apart from the
//! state machine in `mod.rs` because none of them changes an alarm.

use super::{AlarmTable, Identity};
use crate::alarms::{AlarmKind, Level, Source, ZoneStatus};
use crate::clock::{rfc3339, Now};
use crate::rules::Severity;

impl AlarmTable {
    /// Whether the alarm `key` of `zone` is active, and at which severity.
    pub fn active_severity_in(&self, zone: &str, key: &str) -> Option<Severity> {
        self.alarms
            .get(&(zone.to_string(), key.to_string()))
            .filter(|a| a.active)
            .map(|a| a.severity)
    }

    /// Whether the rule condition of alarm `key` in `zone` is present (faults and votes use
    /// this, not `active`, so a latched or shelved alarm does not change what the rules see).
    pub fn condition(&self, zone: &str, key: &str) -> bool {
        self.alarms
            .get(&(zone.to_string(), key.to_string()))
            .is_some_and(|a| a.condition)
    }

    /// As [`AlarmTable::condition`], for the alarm `id` names.
    pub fn condition_of(&self, id: &Identity) -> bool {
        self.alarms.get(&id.slot()).is_some_and(|a| a.condition)
    }

    /// The zones in which alarm `key` has its condition present.
    pub fn zones_with_condition(&self, key: &str) -> Vec<String> {
        self.alarms
            .iter()
            .filter(|((_, k), a)| k == key && a.condition)
            .map(|((z, _), _)| z.clone())
            .collect()
    }

    /// The alarms of one zone whose condition is present, with their severity.
    pub fn active_in_zone<'a>(
        &'a self,
        zone: &'a str,
    ) -> impl Iterator<Item = (&'a Identity, Severity)> + 'a {
        self.alarms
            .values()
            .filter(move |a| a.condition && a.out_of_service.is_none() && a.identity.zone == zone)
            .map(|a| (&a.identity, a.severity))
    }

    /// Alarms the operator must act on, counted by severity (warning, critical, emergency).
    pub fn active_by_severity(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for a in self.alarms.values().filter(|a| a.counts()) {
            n[a.severity as usize] += 1;
        }
        n
    }

    /// The retained status of one zone: shelved and out-of-service alarms excluded. Its
    /// `evidence` ranks only the alarms that say something about a fire, so faults (a blind
    /// zone included) stay loud on the panel without starting a drain.
    pub fn zone_status(&self, zone: &str, now: Now) -> ZoneStatus {
        let mut level = Level::Normal;
        let mut evidence = Level::Normal;
        let mut active = Vec::new();
        let mut shelved = Vec::new();
        let mut faults = 0;
        let mut unacknowledged = 0;
        // Ordered by zone first: this zone's alarms are one run.
        let of_zone = self
            .alarms
            .range((zone.to_string(), String::new())..)
            .take_while(|((z, _), _)| z == zone);
        for ((_, key), a) in of_zone {
            if !a.acked {
                unacknowledged += 1;
            }
            if a.active && a.shelved_until.is_some() {
                shelved.push(key.clone());
            }
            if !a.counts() {
                continue;
            }
            // A missing drain agent is the drain's trouble, not the room's: listed and counted
            // as a fault, but it neither raises the level nor keeps a finished drain going.
            if !Source::is_drain_agent(&a.identity) {
                level = level.max(Level::from(a.severity));
            }
            if a.identity.kind.is_fire_evidence() {
                evidence = evidence.max(Level::from(a.severity));
            }
            if a.identity.kind == AlarmKind::Fault {
                faults += 1;
            }
            active.push(key.clone());
        }
        ZoneStatus {
            zone: zone.to_string(),
            level,
            active,
            faults,
            time: rfc3339(now.wall),
            shelved,
            unacknowledged,
            evidence,
        }
    }
}

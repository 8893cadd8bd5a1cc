//! `[console]`: the site console (`emberwatch console`), the subscriber people use. The type,
//! its defaults and its validator side by side.
//!
//! A console file has `[console]` and `[mqtt]` (as for a gateway: url, topic_prefix, TLS,
//! credentials) and nothing else is required: it watches gateways, it is none. `[site]` may be
//! omitted; the console's MQTT client id defaults to `emberwatch-console`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

/// Default `console.listen`: this host only (reading needs no login on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `console.database`.
pub const DEFAULT_DATABASE: &str = "/var/lib/emberwatch/console.db";
/// Default `console.users_file`.
pub const DEFAULT_USERS_FILE: &str = "/etc/emberwatch/console.users";
/// Default `console.history`: how long events and the audit trail are kept. A year covers
/// the questions asked after an incident and the yearly review of an alarm system.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest `console.history`: an incident is investigated over days, not hours.
pub const MIN_HISTORY: Duration = Duration::from_secs(24 * 3600);

/// The site console (`[console]`).
#[derive(Debug, Clone)]
pub struct Console {
    /// `listen`: where the page and the API are served (`ip:port`); default [`DEFAULT_LISTEN`].
    /// On an address other than loopback reading needs a user too, and the console warns at
    /// start that TLS (a reverse proxy) must be in front.
    pub listen: SocketAddr,
    /// `database`: the SQLite file holding events, alarm state, the audit trail and trends;
    /// created if missing (its directory must exist). Default [`DEFAULT_DATABASE`].
    pub database: PathBuf,
    /// `users_file`: one `name:argon2-hash` a line, made with `emberwatch console-user`.
    /// Default [`DEFAULT_USERS_FILE`]; a missing file means no one can send commands.
    pub users_file: PathBuf,
    /// `sites`: the site ids to watch (`[a-z0-9-]+`), at least one.
    pub sites: Vec<String>,
    /// `alertmanager`: an Alertmanager base URL (`http://host:9093`) to push active alarms to.
    pub alertmanager: Option<String>,
    /// `history`: how long events and the audit trail are kept (default 366 days, at least
    /// 1 day). Trends (10 s min/max/last per point) are kept 8 days.
    pub history: Duration,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawConsole {
    listen: Option<String>,
    database: Option<String>,
    users_file: Option<String>,
    sites: Option<Vec<String>>,
    alertmanager: Option<String>,
    history: Option<String>,
}

impl Validator {
    pub(super) fn console(&mut self, c: RawConsole) -> Console {
        let listen_text = c.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            self.problem(
                "console.listen",
                format!("{listen_text:?} is not an address like {DEFAULT_LISTEN}"),
            );
            ([127, 0, 0, 1], 8080).into()
        });
        let path = |v: Option<String>, default: &str| PathBuf::from(v.unwrap_or(default.into()));
        let database = path(c.database, DEFAULT_DATABASE);
        if database.as_os_str().is_empty() {
            self.problem("console.database", "must not be empty");
        }
        let users_file = path(c.users_file, DEFAULT_USERS_FILE);
        if users_file.as_os_str().is_empty() {
            self.problem("console.users_file", "must not be empty");
        }
        let mut sites = Vec::new();
        match c.sites {
            None => self.problem(
                "console.sites",
                "missing: the site ids to watch, e.g. sites = [\"pangyo-a\"]",
            ),
            Some(list) if list.is_empty() => {
                self.problem("console.sites", "must name at least one site to watch")
            }
            Some(list) => {
                for (i, s) in list.into_iter().enumerate() {
                    let at = format!("console.sites[{i}]");
                    let s = self.id(&at, Some(s), &['-']);
                    if sites.contains(&s) {
                        self.problem(at, format!("{s:?} is listed twice"));
                    } else {
                        sites.push(s);
                    }
                }
            }
        }
        let alertmanager = c.alertmanager.filter(|u| {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.split_once("://").is_some_and(|(_, rest)| {
                    !rest.is_empty()
                        && !rest.starts_with('/')
                        && !rest.contains(char::is_whitespace)
                });
            if !ok {
                self.problem(
                    "console.alertmanager",
                    format!("{u:?} is not an http(s) URL like \"http://127.0.0.1:9093\""),
                );
            }
            ok
        });
        let history = self.duration("console.history", c.history, DEFAULT_HISTORY);
        if history < MIN_HISTORY {
            self.problem("console.history", "must be at least 1 day");
        }
        Console {
            listen,
            database,
            users_file,
            sites,
            alertmanager,
            history,
        }
    }
}

//! `[site]` and `[mqtt]`: who this gateway is and which brokers it publishes to.
//!
//! Kept together because the site ids are half of every topic and the default MQTT client id
//! is made from the gateway id. Each type sits next to its defaults and its validator.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;
use super::Role;

/// Where this gateway sits (`[site]`); both ids end up in every topic.
#[derive(Debug, Clone)]
pub struct Site {
    /// `id`: the site (building, battery room), `[a-z0-9-]+`; the first topic level after the
    /// prefix.
    pub id: String,
    /// `gateway`: this gateway within the site, `[a-z0-9-]+`. Required for a gateway; a drain
    /// agent may omit it (empty then), it is never part of an agent's topics.
    pub gateway: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawSite {
    id: Option<String>,
    gateway: Option<String>,
}

/// Default `mqtt.url` is a broker on this host: `mqtt://127.0.0.1:1883`.
pub const DEFAULT_BROKER_HOST: &str = "127.0.0.1";
/// The port of an `mqtt://` URL that gives none.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// The port of an `mqtts://` URL that gives none.
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default `mqtt.topic_prefix`: the first level of every topic.
pub const DEFAULT_TOPIC_PREFIX: &str = "emberwatch";
/// Default `mqtt.client_id` is this followed by the gateway id (`emberwatch-gw-b1`).
pub const DEFAULT_CLIENT_ID_PREFIX: &str = "emberwatch-";
/// Default `mqtt.keep_alive`.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The shortest `mqtt.keep_alive` accepted.
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Default `mqtt.heartbeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The shortest `mqtt.heartbeat` accepted.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Which broker to reach and how (`[mqtt]`).
#[derive(Debug, Clone)]
pub struct Mqtt {
    /// `url`: the main broker, `mqtt://host[:port]`, `mqtts://host[:port]` or `embedded`;
    /// default `mqtt://`[`DEFAULT_BROKER_HOST`]`:`[`DEFAULT_MQTT_PORT`].
    pub url: BrokerUrl,
    /// `topic_prefix`: the first level of every topic; default [`DEFAULT_TOPIC_PREFIX`].
    pub topic_prefix: String,
    /// `client_id`: the MQTT client id; default [`DEFAULT_CLIENT_ID_PREFIX`] + the gateway id.
    /// Two clients with one id knock each other off the broker.
    pub client_id: String,
    /// `username`: for brokers that require a login; none by default.
    pub username: Option<String>,
    /// `password_file`: the password lives in its own file so the config can be world-readable
    /// and logged.
    pub password_file: Option<PathBuf>,
    /// `ca_file`: the CA certificate(s) to verify an `mqtts://` broker with, instead of the
    /// system roots.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: a client certificate, for brokers that authenticate clients by TLS; goes
    /// with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: the private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `also`: redundant brokers; every message goes to each, with its own delivery cursor.
    pub also: Vec<BrokerUrl>,
    /// `keep_alive`: how often an idle connection is pinged, so a dead broker is noticed;
    /// default [`DEFAULT_KEEP_ALIVE`], at least [`MIN_KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// `heartbeat`: how often the retained status is republished with the latest event `seq`,
    /// so a subscriber can see a gap at the tail (events it never got); default
    /// [`DEFAULT_HEARTBEAT`], at least [`MIN_HEARTBEAT`].
    pub heartbeat: Duration,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(super) struct RawMqtt {
    url: Option<String>,
    topic_prefix: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    also: Vec<String>,
    keep_alive: Option<String>,
    heartbeat: Option<String>,
}

/// A parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// The in-process rumqttd broker on 127.0.0.1:1883, for the demo and single-box sites.
    Embedded,
    /// `mqtt://host[:port]`: plain MQTT.
    Tcp {
        /// The broker's host name or IP address.
        host: String,
        /// The broker's port; [`DEFAULT_MQTT_PORT`] if the URL gives none.
        port: u16,
    },
    /// `mqtts://host[:port]`: MQTT over TLS.
    Tls {
        /// The broker's host name (checked against its certificate) or IP address.
        host: String,
        /// The broker's port; [`DEFAULT_MQTTS_PORT`] if the URL gives none.
        port: u16,
    },
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]`, `mqtts://host[:port]` or `embedded`.
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        if s == "embedded" {
            return Ok(BrokerUrl::Embedded);
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "{s:?} is not a broker URL (expected mqtt://host:port, mqtts://host:port or \"embedded\")"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls {
            DEFAULT_MQTTS_PORT
        } else {
            DEFAULT_MQTT_PORT
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {p:?} is not a number 0-65535"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let host = host.to_string();
        Ok(if tls {
            BrokerUrl::Tls { host, port }
        } else {
            BrokerUrl::Tcp { host, port }
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Embedded => f.write_str("embedded"),
            BrokerUrl::Tcp { host, port } => write!(f, "mqtt://{host}:{port}"),
            BrokerUrl::Tls { host, port } => write!(f, "mqtts://{host}:{port}"),
        }
    }
}

impl Validator {
    /// `mqtt.topic_prefix` must make topics a broker accepts and delivers to subscribers: a
    /// prefix that fails here is not refused by the broker at publish time, it is simply never
    /// delivered, so the gateway would raise alarms nobody receives.
    fn topic_prefix(&mut self, prefix: &str) {
        let problem = if prefix.is_empty()
            || prefix.contains(['#', '+'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            "must be non-empty, without '#', '+' or leading/trailing '/'"
        } else if prefix.starts_with('$') {
            // MQTT 3.1.1 4.7.2: `$` topics are the broker's own ($SYS); subscriptions to `#`
            // never match them and brokers drop what clients publish there.
            "starts with '$': brokers keep $ topics for themselves and deliver nothing published there"
        } else if prefix.chars().any(char::is_control) {
            // MQTT forbids U+0000 in a topic and brokers refuse the other control characters.
            "contains a control character: MQTT topics cannot carry one"
        } else {
            return;
        };
        self.problem("mqtt.topic_prefix", format!("{prefix:?} {problem}"));
    }

    pub(super) fn site(&mut self, s: RawSite, role: Role) -> Site {
        if role == Role::Console {
            // A console is no gateway of any site: `[site]` only names it, if present.
            return Site {
                id: match s.id {
                    Some(id) => self.id("site.id", Some(id), &['-']),
                    None => String::new(),
                },
                gateway: self.id(
                    "site.gateway",
                    Some(s.gateway.unwrap_or_else(|| "console".into())),
                    &['-'],
                ),
            };
        }
        Site {
            id: self.id("site.id", s.id, &['-']),
            gateway: match role {
                // An agent config may omit the gateway; it is never used in an agent's topics.
                Role::DrainAgent if s.gateway.is_none() => String::new(),
                _ => self.id("site.gateway", s.gateway, &['-']),
            },
        }
    }

    pub(super) fn mqtt(&mut self, m: RawMqtt, site: &Site) -> Mqtt {
        let url = match m.url.as_deref() {
            None => BrokerUrl::Tcp {
                host: DEFAULT_BROKER_HOST.into(),
                port: DEFAULT_MQTT_PORT,
            },
            Some(s) => BrokerUrl::parse(s).unwrap_or_else(|e| {
                self.problem("mqtt.url", e);
                BrokerUrl::Embedded
            }),
        };
        let mut also = Vec::new();
        for (i, s) in m.also.iter().enumerate() {
            match BrokerUrl::parse(s) {
                Ok(BrokerUrl::Embedded) => self.problem(
                    format!("mqtt.also[{i}]"),
                    "\"embedded\" can only be the main url",
                ),
                // Each broker has its own delivery cursor, named by its URL.
                Ok(u) if u == url || also.contains(&u) => self.problem(
                    format!("mqtt.also[{i}]"),
                    format!("{u} is already a broker of this gateway"),
                ),
                Ok(u) => also.push(u),
                Err(e) => self.problem(format!("mqtt.also[{i}]"), e),
            }
        }
        let topic_prefix = m
            .topic_prefix
            .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.into());
        self.topic_prefix(&topic_prefix);
        let keep_alive = self.duration("mqtt.keep_alive", m.keep_alive, DEFAULT_KEEP_ALIVE);
        if keep_alive < MIN_KEEP_ALIVE {
            self.problem("mqtt.keep_alive", "must be at least 1s");
        }
        let heartbeat = self.duration("mqtt.heartbeat", m.heartbeat, DEFAULT_HEARTBEAT);
        if heartbeat < MIN_HEARTBEAT {
            self.problem("mqtt.heartbeat", "must be at least 100ms");
        }
        if m.cert_file.is_some() != m.key_file.is_some() {
            self.problem(
                "mqtt.cert_file",
                "cert_file and key_file go together (client certificate and its key)",
            );
        }
        Mqtt {
            url,
            client_id: m
                .client_id
                .unwrap_or_else(|| format!("{DEFAULT_CLIENT_ID_PREFIX}{}", site.gateway)),
            topic_prefix,
            username: m.username,
            password_file: m.password_file.map(PathBuf::from),
            ca_file: m.ca_file.map(PathBuf::from),
            cert_file: m.cert_file.map(PathBuf::from),
            key_file: m.key_file.map(PathBuf::from),
            also,
            keep_alive,
            heartbeat,
        }
    }
}

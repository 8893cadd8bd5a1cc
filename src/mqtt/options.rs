//! Turns `[mqtt]` into rumqttc's connection options: endpoint, credentials, TLS, last will.
//!
//! Every file named in the config is read here, once, before the link starts, so a missing or
//! malformed password, CA or key file fails `connect` with the file's name instead of turning
//! into a connection error repeated every few seconds in the logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
use rumqttc::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use super::link::Presence;
use super::MqttError;
use crate::config::{BrokerUrl, Mqtt};

/// Where the embedded broker listens when `mqtt.url = "embedded"` (SPEC).
pub(crate) const EMBEDDED_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 1883);

/// Largest packet sent. rumqttc's 10 KiB default is too small for a zone status listing many
/// active alarms; an oversized packet would otherwise kill the connection.
const MAX_OUTGOING: usize = 256 * 1024;

/// Largest packet read. rumqttc (MQTT 3.1.1) cannot skip a packet over its limit: the read
/// fails and the connection drops, taking the retained status offline and losing the commands
/// behind it. MQTT 3.1.1 has no way to tell the broker this limit, so it is set well above
/// [`MAX_BODY`](crate::command::MAX_BODY), so that an oversized command is read and refused by
/// name, and the broker is told the same number in its own configuration
/// (`max_packet_size` in deploy/mosquitto/emberwatch.conf), so nothing larger reaches us.
pub(crate) const MAX_INCOMING: usize = 1024 * 1024;
const _: () = assert!(MAX_INCOMING > 2 * crate::command::MAX_BODY);

/// Unacked QoS 1 publishes rumqttc may track. The link's own window is smaller (see
/// `link::WINDOW`), so rumqttc's flow control never has to stop on its own.
pub(crate) const RUMQTTC_INFLIGHT: u16 = 100;

/// CA bundles of common Linux distributions, tried in order when `mqtt.ca_file` is not set
/// (after `$SSL_CERT_FILE`). rumqttc's own platform-roots default panics on an unreadable
/// certificate store, so the bundle is read here, where a failure can be reported.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The broker this link connects to, after resolving `embedded`.
pub(crate) fn endpoint(url: &BrokerUrl) -> (String, u16) {
    match url {
        BrokerUrl::Embedded => {
            let (ip, port) = EMBEDDED_ADDR;
            (std::net::Ipv4Addr::from(ip).to_string(), port)
        }
        // rumqttc joins host and port with ':', so an IPv6 literal needs its brackets back.
        BrokerUrl::Tcp { host, port } if host.contains(':') => (format!("[{host}]"), *port),
        BrokerUrl::Tcp { host, port } | BrokerUrl::Tls { host, port } => (host.clone(), *port),
    }
}

/// Builds the rumqttc options for `m`, reading the password and certificate files. The last
/// will is the presence's offline form (none for short-lived tools); `clean_session` is false only for connections that
/// need the broker to queue what they miss while away (drain agents).
pub(crate) fn build(
    m: &Mqtt,
    client_id: &str,
    presence: Option<&Presence>,
    clean_session: bool,
) -> Result<MqttOptions, MqttError> {
    let (host, port) = endpoint(&m.url);
    let mut o = MqttOptions::new(client_id.to_string(), host, port);
    o.set_keep_alive(keep_alive(m.keep_alive));
    // The link keeps its own ledger of unacked messages and resends them itself, so for what it
    // publishes a broker session buys nothing, and a clean one keeps brokers from queueing for
    // a dead gateway. A drain agent asks for a session anyway: requests published while it was
    // reconnecting must still reach it.
    o.set_clean_session(clean_session);
    o.set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    o.set_inflight(RUMQTTC_INFLIGHT);
    if let Some(presence) = presence {
        o.set_last_will(LastWill::new(
            presence.topic.clone(),
            presence.offline.clone(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    if let Some(user) = &m.username {
        let password = match &m.password_file {
            Some(path) => read_password(path)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    } else if m.password_file.is_some() {
        tracing::warn!(
            "mqtt.password_file is set but mqtt.username is not; MQTT 3.1.1 sends a password \
             only with a user name, so none is sent"
        );
    }
    if let BrokerUrl::Tls { .. } = m.url {
        let tls = tls_config(m)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    } else if m.ca_file.is_some() || m.cert_file.is_some() {
        tracing::warn!(
            "mqtt.ca_file/cert_file are set but {} is not mqtts://; they are not used",
            m.url
        );
    }
    Ok(o)
}

/// rumqttc panics on a keep-alive between 0 and 1 s (config validation already refuses it).
fn keep_alive(d: Duration) -> Duration {
    d.clamp(
        Duration::from_secs(1),
        Duration::from_secs(u64::from(u16::MAX)),
    )
}

/// The password file's content without its trailing newline. The password itself never
/// appears in an error or log line.
pub(crate) fn read_password(path: &Path) -> Result<String, MqttError> {
    let text = crate::files::read_text_at_most(path, crate::files::MAX_SMALL)
        .map_err(|e| file_error("mqtt.password_file", path, e))?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(MqttError::File {
            key: "mqtt.password_file",
            path: path.to_path_buf(),
            reason: "is empty".into(),
        });
    }
    Ok(password)
}

fn file_error(key: &'static str, path: &Path, e: std::io::Error) -> MqttError {
    MqttError::File {
        key,
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    }
}

/// rustls client configuration: roots from `ca_file` (or the system bundle), optional client
/// certificate.
fn tls_config(m: &Mqtt) -> Result<rustls::ClientConfig, MqttError> {
    let tls_err = |reason: String| MqttError::Tls {
        url: m.url.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &m.ca_file {
        Some(path) => {
            for cert in read_certs("mqtt.ca_file", path)? {
                roots.add(cert).map_err(|e| MqttError::File {
                    key: "mqtt.ca_file",
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let path = system_ca_bundle().ok_or_else(|| {
                tls_err(format!(
                    "no mqtt.ca_file given and no system CA bundle found ($SSL_CERT_FILE, {})",
                    SYSTEM_CA_BUNDLES.join(", ")
                ))
            })?;
            let pem = crate::files::read_at_most(&path, crate::files::MAX_SMALL)
                .map_err(|e| file_error("system CA bundle", &path, e))?;
            // One odd certificate in a distribution bundle must not stop the gateway.
            let (added, _ignored) = roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok),
            );
            if added == 0 {
                return Err(MqttError::File {
                    key: "system CA bundle",
                    path,
                    reason: "holds no usable certificate".into(),
                });
            }
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots);
    match (&m.cert_file, &m.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = read_certs("mqtt.cert_file", cert_path)?;
            let pem = crate::files::read_at_most(key_path, crate::files::MAX_SMALL)
                .map_err(|e| file_error("mqtt.key_file", key_path, e))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| MqttError::File {
                key: "mqtt.key_file",
                path: key_path.clone(),
                reason: format!("no PEM private key: {e}"),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls_err(format!("client certificate and key: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(tls_err(
            "mqtt.cert_file and mqtt.key_file must be given together".into(),
        )),
    }
}

/// Every PEM certificate in `path`; none at all is an error naming the file.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let pem = crate::files::read_at_most(path, crate::files::MAX_SMALL)
        .map_err(|e| file_error(key, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MqttError::File {
            key,
            path: path.to_path_buf(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(MqttError::File {
            key,
            path: path.to_path_buf(),
            reason: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

fn system_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqtt.pass");
        std::fs::write(&path, " s3cret \r\n").unwrap();
        assert_eq!(read_password(&path).unwrap(), " s3cret ");
    }

    #[test]
    fn file_errors_name_the_key_and_file_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pass");
        let e = read_password(&missing).unwrap_err().to_string();
        assert!(e.starts_with("mqtt.password_file "), "{e}");
        assert!(e.contains("nope.pass: cannot read"), "{e}");

        let empty = dir.path().join("empty.pass");
        std::fs::write(&empty, "\n").unwrap();
        let e = read_password(&empty).unwrap_err().to_string();
        assert!(e.ends_with("empty.pass: is empty"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = read_certs("mqtt.ca_file", &ca).unwrap_err().to_string();
        assert!(e.starts_with("mqtt.ca_file "), "{e}");
        assert!(e.contains("ca.pem: holds no PEM certificate"), "{e}");
    }

    #[test]
    fn endpoints() {
        let tcp = BrokerUrl::parse("mqtt://broker.example:1884").unwrap();
        assert_eq!(endpoint(&tcp), ("broker.example".to_string(), 1884));
        let v6 = BrokerUrl::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(endpoint(&v6), ("[::1]".to_string(), 1883));
        assert_eq!(
            endpoint(&BrokerUrl::Embedded),
            ("127.0.0.1".to_string(), 1883)
        );
    }

    /// An oversized command must be read to be refused, and the example broker configuration
    /// must stop anything the gateway could not read.
    #[test]
    fn the_incoming_limit_reads_any_command_and_the_broker_enforces_it() {
        let cfg = crate::mqtt::harness::config("mqtt://127.0.0.1:1883");
        let o = build(&cfg.mqtt, "gw", None, true).unwrap();
        assert_eq!(o.max_packet_size(), MAX_INCOMING);
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/mosquitto/emberwatch.conf"
        ))
        .unwrap();
        let broker_limit: usize = conf
            .lines()
            .find_map(|l| l.strip_prefix("max_packet_size "))
            .expect("max_packet_size in the example mosquitto configuration")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(broker_limit, MAX_INCOMING);
    }

    #[test]
    fn keep_alive_stays_in_what_rumqttc_accepts() {
        assert_eq!(
            keep_alive(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(keep_alive(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(
            keep_alive(Duration::from_secs(1_000_000)),
            Duration::from_secs(65535)
        );
    }
}

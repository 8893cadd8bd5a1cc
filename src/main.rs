//! The `emberwatch` command line: parse arguments, load the configuration, hand over to the
//! library. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use emberwatch::config::{Config, Role};
use emberwatch::logging::{self, LogFormat};

const DEFAULT_CONFIG: &str = "/etc/emberwatch/emberwatch.toml";

/// Early warning for Li-ion battery rooms: polls off-gas, smoke, temperature and UPS sensors,
/// raises alarms over MQTT, and coordinates a traffic drain before the power is cut.
#[derive(Parser, Debug)]
#[command(name = "emberwatch", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr (plain suits journald; json suits log shippers).
    #[arg(long, global = true, value_enum, default_value = "plain")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway daemon: poll devices, evaluate rules, publish alarms.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file: print a summary and exit 0, or every error and exit 1.
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Poll every device once and print the decoded values (for commissioning).
    Read {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Serve a simulated battery rack and UPS over Modbus TCP (register map in the README).
    Sim(emberwatch::sim::SimArgs),
    /// Find a SunSpec device's models and print a [[profiles]] block for its battery models.
    ///
    /// Looks for the "SunS" marker at holding registers 40000, 50000 and 0, walks the model
    /// chain, prints the models found (id, name, start register, length), then, last on
    /// standard output and ready to paste into a configuration (or a file given to `include`),
    /// a [[profiles]] block for the battery models 802 (battery), 803 (lithium-ion bank), 804
    /// (lithium-ion string) and 805 (lithium-ion module): state of charge and health, voltages,
    /// current, temperatures and event bitfields, each with its register, type, SunSpec's
    /// scale factor applied, and its "not implemented" sentinel. Exits 1 with the reason when
    /// the device has no marker, its chain is broken, or it does not answer.
    ///
    /// Example: `emberwatch discover --address 192.0.2.10:502 --unit 3 > profiles/rack.toml`
    Discover(emberwatch::sunspec::DiscoverArgs),
    /// Run a drain agent: on a drain request for its zones, run its drain hook and acknowledge;
    /// on cancellation, run its restore hook.
    DrainAgent {
        /// Agent configuration file ([site], [mqtt], [storage], [agent]).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask the gateway of a redundant pair to hand over to its standby peer (maintenance):
    /// exits 0 once it stepped down, non-zero with its reason if it refused.
    Switchover {
        /// The gateway's configuration file (the one `emberwatch run` uses).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Who asks, named in both gateways' role_reason (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Rehearse a drain of ZONE end to end through the running gateway, every message marked
    /// "drill": true; prints the timeline, exits 0 if every expected agent confirmed.
    Drill {
        /// The gateway's configuration file (the one `emberwatch run` uses).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The zone to drill.
        #[arg(long)]
        zone: String,
    },
    /// Play a thermal-runaway in one process (simulator, embedded broker, a redundant pair of
    /// gateways, drain agent, site console) and narrate what an operator sees on MQTT, the active
    /// gateway killed mid-drain and its standby taking over included; the console's page follows
    /// live.
    Demo {
        /// After the story, leave everything running (console page included) until Ctrl-C, so
        /// you can click around.
        #[arg(long)]
        keep: bool,
    },
    /// Run the site console: listen to every gateway of the watched sites, keep the history in
    /// SQLite, repair gaps with cmd/replay, and serve the web page and JSON API.
    ///
    /// The file needs [console] (listen, database, users_file, sites) and [mqtt] as for a
    /// gateway. Reading is open on a loopback listener; commands (ack, shelve, service) always
    /// need a user from users_file (see `emberwatch console-user`).
    Console {
        /// Console configuration file.
        #[arg(long, short, default_value = "/etc/emberwatch/console.toml")]
        config: PathBuf,
    },
    /// Add a console user, or replace their password: reads the password from stdin (one line)
    /// and writes NAME with its argon2 hash to the users file (created with mode 0600).
    ///
    /// Example: `emberwatch console-user --users /etc/emberwatch/console.users kim` and type
    /// the password, or `printf '%s\n' "$PW" | emberwatch console-user --users FILE kim`.
    /// The console rereads the file on every login, so no restart is needed.
    ConsoleUser {
        /// The users file (`console.users_file` of the console's configuration).
        #[arg(long)]
        users: PathBuf,
        /// The user's name as typed at login: 1-64 characters, no ':' and no control characters.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // The demo narrates the drain itself; its warn-level log lines would only repeat it.
        Command::Demo { .. } => "warn,rumqttd=off,emberwatch::drain=error",
        _ => "info,rumqttd=warn",
    };
    logging::init(cli.log_format, default_filter);
    let rt = match &cli.command {
        // The gateway daemon runs every task on one thread. Its work is mostly waiting (for
        // devices, for the broker): a reading then crosses no thread on its way from the poll
        // to the broker, where a pool spends more CPU waking its threads than on the reading
        // (issue 14: 1,000 devices at 1 Hz). The outbox writes have a thread of their own.
        Command::Run { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emberwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("emberwatch: {}", emberwatch::report::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config } => {
            let cfg = load_or_report(&config, Role::Gateway)?;
            emberwatch::daemon::run(cfg, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => Ok(match Config::load(&config, role_of(&config)) {
            Ok(cfg) if cfg.console.is_some() => {
                println!("{}", emberwatch::console::summary(&cfg));
                ExitCode::SUCCESS
            }
            Ok(cfg) => {
                println!("{}", emberwatch::report::summary(&cfg));
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }),
        Command::Read { config, device } => {
            let cfg = load_or_report(&config, Role::Gateway)?;
            let ok = emberwatch::report::read_once(&cfg, device.as_deref()).await;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Sim(args) => {
            emberwatch::sim::run_cli(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Discover(args) => {
            emberwatch::sunspec::run_cli(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep } => {
            emberwatch::demo::run(keep).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DrainAgent { config } => {
            let cfg = load_or_report(&config, Role::DrainAgent)?;
            emberwatch::drain::agent::run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Console { config } => {
            let cfg = load_or_report(&config, Role::Console)?;
            emberwatch::console::run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ConsoleUser { users, name } => {
            emberwatch::console::users::add_from_stdin(&users, &name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Switchover { config, by } => {
            let cfg = load_or_report(&config, Role::Gateway)?;
            let by = by.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()));
            match emberwatch::pair::switchover::run(&cfg, by).await {
                Ok(reason) => {
                    println!("{}: {reason}", cfg.site.gateway);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Drill { config, zone } => {
            let cfg = load_or_report(&config, Role::Gateway)?;
            Ok(if emberwatch::drain::drill::run(&cfg, &zone).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The role `check-config` validates a file for: a console file is recognised by its
/// `[console]` section (an unreadable file is reported by the loading itself).
fn role_of(path: &std::path::Path) -> Role {
    emberwatch::files::read_text_at_most(path, emberwatch::files::MAX_CONFIG)
        .map(|t| Role::of_text(&t))
        .unwrap_or(Role::Gateway)
}

fn load_or_report(path: &std::path::Path, role: Role) -> anyhow::Result<Config> {
    Config::load(path, role).map_err(|e| anyhow::anyhow!("refusing to start: {e}"))
}

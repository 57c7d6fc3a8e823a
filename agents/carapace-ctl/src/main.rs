//! `carapace-ctl`: reads and changes a Carapace node's settings, shows its
//! status and logs, and reboots or powers it off, through the node's API.
//! See the library documentation for endpoints and exit codes.

use carapace_contract::update;
use carapace_ctl::text::{diff_lines, settings_lines, status_text};
use carapace_ctl::{
    logs_path, merge_patch, parse_key, settings_path, Client, Endpoint, Error, Fingerprint,
    LogEntry, Method, Response, DEFAULT_ENDPOINT, EXIT_CODES_HELP,
};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "carapace-ctl",
    version,
    about = "Configure and inspect a Carapace node through its API",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// The node's API: unix:/path/to/api.sock (local, as root) or
    /// https://HOST[:PORT] (remote, port 8443 by default).
    #[arg(long, global = true, env = "CARAPACE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// The API token, for https endpoints.
    #[arg(long, global = true, env = "CARAPACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 of the node's TLS certificate (64 hex digits, `:` allowed),
    /// printed on the node's console and shown in `status`. Required for
    /// https endpoints.
    #[arg(long, global = true, env = "CARAPACE_FINGERPRINT")]
    fingerprint: Option<String>,
    /// How to print answers: for people, or the node's JSON as it is.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the committed settings, or one subtree (e.g. `network.dns`).
    Get {
        /// A dotted key; quote segments holding dots: sysctl."net.ipv4.ip_forward".
        key: Option<String>,
    },
    /// Change settings (stage and commit them).
    ///
    /// All the pairs make one merge patch, staged then committed (unless
    /// --stage). VALUE is JSON if it parses as JSON (numbers, true/false,
    /// null, [..], {..}, "quoted"), else a string; null resets a setting to
    /// its default. A key segment holding dots is quoted:
    /// 'sysctl."net.ipv4.ip_forward"=1'. If the commit fails, the change
    /// stays staged.
    Set {
        /// e.g. hostname=node1 network.dhcp=false 'network.dns=["9.9.9.9"]'
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
        /// Only stage the change; `apply` commits it, `discard` drops it.
        #[arg(long)]
        stage: bool,
    },
    /// Commit (apply) the staged changes.
    Apply,
    /// Drop the staged changes.
    Discard,
    /// Show the staged changes (against the committed settings).
    Pending,
    /// Show the node's status: version, storage, network, services.
    Status,
    /// Show services' logs (all services, or one).
    Logs {
        /// Keep printing new lines as they come (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// How many past lines to show (the node's default: 100).
        #[arg(short = 'n', long)]
        lines: Option<usize>,
        /// Only this service's log.
        service: Option<String>,
    },
    /// Updates: check, download, apply, and their status.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Reboot the node.
    Reboot,
    /// Power the node off.
    Poweroff,
}

#[derive(Subcommand, Debug)]
enum UpdateCommand {
    /// Show the update state, progress and versions (running, fallback, available, staged).
    Status,
    /// Ask the update source for a newer signed version.
    Check {
        /// Consider versions older than the running one too.
        #[arg(long)]
        force: bool,
    },
    /// Write the newest version into the inactive slot and verify it.
    Download {
        /// Allow a downgrade.
        #[arg(long)]
        force: bool,
        /// Wait until it is done (or failed) instead of returning at once.
        #[arg(long)]
        wait: bool,
    },
    /// Make the downloaded version boot next; then `carapace-ctl reboot`.
    Apply,
    /// Stop a download.
    Cancel,
}

/// Why a command failed.
enum Failure {
    /// A request failed; the note, if any, is said after the error.
    Api(Error, Option<&'static str>),
    /// Writing the output failed.
    Output(std::io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Api(e, None)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Output(e)
    }
}

const STILL_STAGED: &str = "the change stays staged: see it with `carapace-ctl pending`, \
     retry with `carapace-ctl apply`, or drop it with `carapace-ctl discard`";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain(&format!("cannot start: {e}"));
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => carapace_ctl::EXIT_OK,
        Err(Failure::Api(e, note)) => {
            complain(&e.to_string());
            if let Some(note) = note {
                complain(note);
            }
            e.exit_code()
        }
        // A reader that went away (`| head`) is not a failure.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            carapace_ctl::EXIT_OK
        }
        Err(Failure::Output(e)) => {
            complain(&format!("cannot write the output: {e}"));
            1
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn complain(message: &str) {
    let _ = writeln!(std::io::stderr(), "carapace-ctl: {message}");
}

async fn connect(cli: &Cli) -> Result<Client, Error> {
    let endpoint = Endpoint::parse(&cli.endpoint)?;
    let fingerprint = match (&endpoint, &cli.fingerprint) {
        (Endpoint::Https { .. }, Some(f)) => Some(Fingerprint::parse(f)?),
        _ => None,
    };
    Client::connect(&endpoint, cli.token.as_deref(), fingerprint.as_ref()).await
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Check the arguments before connecting: a typo is a usage error even
    // when the node is away.
    let patch = match &cli.command {
        Command::Set { pairs, .. } => Some(merge_patch(pairs)?),
        _ => None,
    };
    let key_path = match &cli.command {
        Command::Get { key } => Some(settings_path(key.as_deref())?),
        _ => None,
    };
    let mut client = connect(&cli).await?;
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Get { key } => {
            let path = key_path.unwrap_or_else(|| "/v1/settings".into());
            let response = client.call(Method::GET, &path, None).await?;
            if json {
                return raw(&response);
            }
            let prefix = match key.as_deref().filter(|k| !k.is_empty()) {
                Some(k) => parse_key(k)?,
                None => Vec::new(),
            };
            lines(&settings_lines(&prefix, &response.json()?))
        }
        Command::Set { stage, .. } => {
            let patch = patch.unwrap_or_default();
            let staged = client
                .call(Method::PATCH, "/v1/settings", Some(&patch))
                .await?;
            if *stage {
                if json {
                    return raw(&staged);
                }
                return lines(&[
                    "staged; commit with `carapace-ctl apply`, drop with `carapace-ctl discard`"
                        .to_string(),
                ]);
            }
            match client.call(Method::POST, "/v1/settings/commit", None).await {
                Ok(committed) => show_commit(&committed, json),
                Err(e) => Err(Failure::Api(e, Some(STILL_STAGED))),
            }
        }
        Command::Apply => {
            let committed = client
                .call(Method::POST, "/v1/settings/commit", None)
                .await?;
            show_commit(&committed, json)
        }
        Command::Discard => {
            let response = client
                .call(Method::DELETE, "/v1/settings/pending", None)
                .await?;
            if json {
                return raw(&response);
            }
            lines(&["discarded the staged changes".to_string()])
        }
        Command::Pending => {
            let pending = client
                .call(Method::GET, "/v1/settings/pending", None)
                .await?;
            if json {
                return raw(&pending);
            }
            let committed = client.get_json("/v1/settings").await?;
            let diff = diff_lines(&committed, &pending.json()?);
            if diff.is_empty() {
                return lines(&["staged, but it changes nothing".to_string()]);
            }
            lines(&diff)
        }
        Command::Status => {
            let response = client.call(Method::GET, "/v1/status", None).await?;
            if json {
                return raw(&response);
            }
            write_out(status_text(&response.json()?).as_bytes())
        }
        Command::Logs {
            follow,
            lines,
            service,
        } => {
            let path = logs_path(service.as_deref(), *lines, *follow);
            let mut stream = client.stream(Method::GET, &path).await?;
            while let Some(line) = stream.next_line().await? {
                if line.trim().is_empty() {
                    continue;
                }
                let shown = match (json, LogEntry::parse(&line)) {
                    (false, Ok(entry)) => format!("[{}] {}\n", entry.service, entry.line),
                    // JSON wanted, or a line that is not an entry: as it came.
                    _ => format!("{line}\n"),
                };
                write_out(shown.as_bytes())?;
            }
            Ok(())
        }
        Command::Update(update) => run_update(&mut client, update, json).await,
        Command::Reboot | Command::Poweroff => {
            let action = if matches!(cli.command, Command::Reboot) {
                "reboot"
            } else {
                "poweroff"
            };
            let response = client
                .call(Method::POST, &format!("/v1/power/{action}"), None)
                .await?;
            if json {
                return raw(&response);
            }
            lines(&[format!("{action} requested")])
        }
    }
}

/// The update daemon's report, as `GET /v1/update` sends it.
fn update_status(body: serde_json::Value) -> Result<update::Status, Error> {
    serde_json::from_value(body)
        .map_err(|e| Error::BadResponse(format!("not an update status ({e})")))
}

async fn run_update(client: &mut Client, cmd: &UpdateCommand, json: bool) -> Result<(), Failure> {
    let force_body = |force: bool| force.then(|| serde_json::json!({ "force": true }));
    let response = match cmd {
        UpdateCommand::Status => client.call(Method::GET, "/v1/update", None).await?,
        UpdateCommand::Check { force } => {
            client
                .call(
                    Method::POST,
                    "/v1/update/check",
                    force_body(*force).as_ref(),
                )
                .await?
        }
        UpdateCommand::Download { force, wait } => {
            let started = client
                .call(
                    Method::POST,
                    "/v1/update/download",
                    force_body(*force).as_ref(),
                )
                .await?;
            if !*wait {
                started
            } else {
                // Follow the status until the download ends one way or the other.
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let status = client.call(Method::GET, "/v1/update", None).await?;
                    let report = update_status(status.json()?)?;
                    if !report.busy() {
                        if report.state == update::State::Error.as_str() {
                            return Err(Failure::Api(
                                Error::Refused {
                                    status: 409,
                                    message: format!("the download failed: {}", report.error),
                                    path: None,
                                },
                                None,
                            ));
                        }
                        break status;
                    }
                }
            }
        }
        UpdateCommand::Apply => client.call(Method::POST, "/v1/update/apply", None).await?,
        UpdateCommand::Cancel => client.call(Method::POST, "/v1/update/cancel", None).await?,
    };
    if json {
        return raw(&response);
    }
    let body = response.json()?;
    let text = match cmd {
        UpdateCommand::Check { .. } => match body["available"].as_str() {
            Some(v) => format!("{v} is available"),
            None => "no newer version".to_string(),
        },
        UpdateCommand::Apply => format!(
            "{} boots next; reboot with `carapace-ctl reboot`",
            body["staged"].as_str().unwrap_or("the update")
        ),
        UpdateCommand::Cancel => "cancel requested".to_string(),
        UpdateCommand::Download { wait: false, .. } => {
            "download started; follow it with `carapace-ctl update status`".to_string()
        }
        UpdateCommand::Status | UpdateCommand::Download { wait: true, .. } => {
            let s = update_status(body)?;
            let field = |v: &str| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.to_string()
                }
            };
            format!(
                "state {} ({:.0}%)\nrunning {} (slot {}, {})\nfallback {}\navailable {}\nstaged {}\nrolled back {}{}",
                field(&s.state),
                s.progress * 100.0,
                field(&s.running),
                field(&s.slot),
                if s.blessed { "blessed" } else { "on trial" },
                field(&s.fallback),
                field(&s.available),
                field(&s.staged),
                field(&s.rolled_back),
                if s.error.is_empty() { String::new() } else { format!("\nerror {}", s.error) }
            )
        }
    };
    lines(&[text])
}

fn show_commit(committed: &Response, json: bool) -> Result<(), Failure> {
    if json {
        return raw(committed);
    }
    let body = committed.json()?;
    let applied: Vec<String> = match body.get("applied") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    };
    if applied.is_empty() {
        lines(&["committed; nothing needed applying".to_string()])
    } else {
        lines(&[format!("committed; applied: {}", applied.join(", "))])
    }
}

/// The body as the node sent it, ending with a newline (nothing for an
/// empty body).
fn raw(response: &Response) -> Result<(), Failure> {
    if response.body.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&response.body)?;
    if !response.body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn lines(lines: &[String]) -> Result<(), Failure> {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    write_out(text.as_bytes())
}

fn write_out(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

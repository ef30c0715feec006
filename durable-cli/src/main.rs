//! `durable`: list, inspect and operate the orchestration instances and entities of a
//! durable host through its keyed management API (`/runtime/webhooks/durabletask/`).
//!
//! The key comes from `DURABLE_KEY` or `--key-file` and travels only in the
//! `x-functions-key` header; it is never printed. Errors are one line on stderr
//! (`error: ...`) with an exit code that says what kind of error it was.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod api;
mod commands;
mod table;

use api::{Api, CliError};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the instance failed or was terminated (watch), or a purge was not confirmed
  2  usage error (bad arguments, no key)
  3  the host could not be reached
  4  the host refused the key (401/403)
  5  not found (404)
  6  the host rejected the request (other 4xx)
  7  the host failed (5xx) or answered something unexpected

The key is read from DURABLE_KEY, or from the file given with --key-file; it is never printed.";

/// Operate a durable host from the terminal, through its management API.
#[derive(Parser, Debug)]
#[command(name = "durable", version, after_help = EXIT_CODES)]
struct Cli {
    /// The host's URL, with its mount prefix if it has one.
    #[arg(
        long,
        env = "DURABLE_URL",
        default_value = "http://127.0.0.1:7071",
        global = true
    )]
    url: String,
    /// A file holding the management key (instead of the DURABLE_KEY variable).
    #[arg(long, value_name = "PATH", global = true)]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List instances, filtered by status, id prefix and creation time.
    List(ListArgs),
    /// Show an instance: status, input, output, custom status, failure and history.
    Show {
        /// The instance id.
        id: String,
        /// Print the management API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start an orchestration; prints the instance id.
    Start {
        /// The orchestrator's name.
        name: String,
        /// The input, as JSON.
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        /// The instance id (default: a random one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Raise an external event on an instance.
    Raise {
        /// The instance id.
        id: String,
        /// The event name.
        event: String,
        /// The event data, as JSON.
        data: String,
    },
    /// Terminate a running instance.
    Terminate(ReasonArgs),
    /// Suspend a running instance.
    Suspend(ReasonArgs),
    /// Resume a suspended instance.
    Resume(ReasonArgs),
    /// Rewind a failed instance: its failed work runs again.
    Rewind(ReasonArgs),
    /// Restart a finished instance from the beginning with its input; prints the id.
    Restart {
        /// The instance id.
        id: String,
        /// Run it under a new instance id instead of the same one.
        #[arg(long)]
        new_id: bool,
    },
    /// Purge one finished instance, or every finished instance a filter matches, each with
    /// the sub-orchestrations it started (unless started as abandoned).
    Purge(PurgeArgs),
    /// List, read and signal entities.
    #[command(subcommand)]
    Entities(EntitiesCommand),
    /// Follow an instance until it finishes; exits 0 when it completes, 1 otherwise.
    Watch {
        /// The instance id.
        id: String,
        /// Seconds between status reads.
        #[arg(long, default_value = "1", value_parser = parse_interval)]
        interval: std::time::Duration,
    },
    /// Instance histories.
    #[command(subcommand)]
    History(HistoryCommand),
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only these statuses (repeat the flag or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    status: Vec<String>,
    /// Only ids starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Created at or after: an ISO 8601 time, or an age such as 30m, 12h, 7d.
    #[arg(long, value_parser = parse_time)]
    from: Option<String>,
    /// Created at or before: an ISO 8601 time, or an age such as 30m, 12h, 7d.
    #[arg(long, value_parser = parse_time)]
    to: Option<String>,
    /// How many instances to print (one page of this size unless --all).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    top: u32,
    /// Follow continuation tokens to the end.
    #[arg(long)]
    all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReasonArgs {
    /// The instance id.
    id: String,
    /// Why (recorded in the history).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "from"])))]
struct PurgeArgs {
    /// The instance to purge.
    #[arg(conflicts_with_all = ["from", "to", "status"])]
    id: Option<String>,
    /// Purge instances created at or after this (ISO 8601, or an age such as 7d).
    #[arg(long, value_parser = parse_time)]
    from: Option<String>,
    /// Only instances created at or before this (default: now).
    #[arg(long, value_parser = parse_time, requires = "from")]
    to: Option<String>,
    /// Only these statuses (finished ones: Completed, Failed, Terminated, Canceled).
    #[arg(long, value_delimiter = ',', value_parser = parse_status, requires = "from")]
    status: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Subcommand, Debug)]
enum EntitiesCommand {
    /// List entities with their state.
    List {
        /// Only entities with this name.
        name: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an entity's state as JSON.
    Get {
        /// The entity name.
        name: String,
        /// The entity key.
        key: String,
    },
    /// Signal an operation to an entity.
    Signal {
        /// The entity name.
        name: String,
        /// The entity key.
        key: String,
        /// The operation.
        op: String,
        /// The operation's input, as JSON.
        input: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum HistoryCommand {
    /// Print the full history as the engine records it (JSON, for replaying it later).
    Export {
        /// The instance id.
        id: String,
    },
}

/// The runtime statuses, as the management API names them.
const STATUSES: [&str; 8] = [
    "Running",
    "Pending",
    "Suspended",
    "Completed",
    "Failed",
    "Terminated",
    "ContinuedAsNew",
    "Canceled",
];

/// A status name, any case; checked here so a typo never widens a purge.
fn parse_status(s: &str) -> Result<String, String> {
    STATUSES
        .iter()
        .find(|st| st.eq_ignore_ascii_case(s.trim()))
        .map(|st| st.to_string())
        .ok_or_else(|| {
            format!(
                "unknown status '{s}'; expected one of {}",
                STATUSES.join(", ")
            )
        })
}

/// An age (`90s`, `30m`, `12h`, `7d`) becomes the time that long ago; anything else goes to
/// the host as written, which checks it.
fn parse_time(s: &str) -> Result<String, String> {
    let s = s.trim();
    let unit = s.chars().last().unwrap_or(' ');
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Ok(s.to_string()),
    };
    let Ok(n) = s[..s.len() - 1].parse::<i64>() else {
        return Ok(s.to_string());
    };
    let ago = n
        .checked_mul(seconds)
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .filter(|_| n >= 0)
        .ok_or_else(|| format!("the age '{s}' is out of range"))?;
    Ok(ago.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.05..=60.0).contains(v))
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("invalid interval '{s}': a number of seconds from 0.05 to 60"))
}

/// The key from `--key-file` or `DURABLE_KEY`.
fn load_key(file: Option<&PathBuf>) -> Result<String, CliError> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read the key file {}: {e}", path.display()))
        })?,
        None => std::env::var("DURABLE_KEY").unwrap_or_default(),
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Usage(
            "no management key: set DURABLE_KEY or pass --key-file".into(),
        ));
    }
    Ok(key)
}

/// Writes to stdout; a closed pipe (`durable list | head`) is not an error.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let key = load_key(cli.key_file.as_ref())?;
    let api = Api::new(&cli.url, key)?;
    match cli.command {
        Command::List(a) => commands::list(&api, &a).await,
        Command::Show { id, json } => commands::show(&api, &id, json).await,
        Command::Start { name, input, id } => {
            commands::start(&api, &name, input.as_deref(), id.as_deref()).await
        }
        Command::Raise { id, event, data } => commands::raise(&api, &id, &event, &data).await,
        Command::Terminate(a) => commands::operate(&api, "terminate", &a).await,
        Command::Suspend(a) => commands::operate(&api, "suspend", &a).await,
        Command::Resume(a) => commands::operate(&api, "resume", &a).await,
        Command::Rewind(a) => commands::operate(&api, "rewind", &a).await,
        Command::Restart { id, new_id } => commands::restart(&api, &id, new_id).await,
        Command::Purge(a) => commands::purge(&api, &a).await,
        Command::Entities(EntitiesCommand::List { name, json }) => {
            commands::entities_list(&api, name.as_deref(), json).await
        }
        Command::Entities(EntitiesCommand::Get { name, key }) => {
            commands::entities_get(&api, &name, &key).await
        }
        Command::Entities(EntitiesCommand::Signal {
            name,
            key,
            op,
            input,
        }) => commands::entities_signal(&api, &name, &key, &op, input.as_deref()).await,
        Command::Watch { id, interval } => commands::watch(&api, &id, interval).await,
        Command::History(HistoryCommand::Export { id }) => {
            commands::history_export(&api, &id).await
        }
    }
}

/// A usage error as one line: clap's message without its usage block.
fn usage_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    format!(
        "{} (see --help)",
        message.strip_prefix("error: ").unwrap_or(&message)
    )
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("error: {}", usage_line(&e));
            return ExitCode::from(2);
        }
        // --help and --version.
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(7);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn statuses_and_times_are_checked() {
        assert_eq!(parse_status("failed").unwrap(), "Failed");
        assert!(parse_status("Done").unwrap_err().contains("Completed"));
        assert_eq!(parse_time("2024-01-31").unwrap(), "2024-01-31");
        let ago = parse_time("2h").unwrap();
        let t = chrono::DateTime::parse_from_rfc3339(&ago).unwrap();
        let age = chrono::Utc::now().signed_duration_since(t);
        assert!((7190..=7210).contains(&age.num_seconds()), "{age}");
        assert!(parse_time("99999999999999d").is_err());
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("0.5").is_ok());
    }
}

//! `abc-operator controller | run MANIFEST | crd`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Runs pyABC's Redis-based ABC-SMC sampling on Kubernetes or locally"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes controller (in cluster, or with the current kubeconfig).
    Controller(abc_operator::controller::ControllerArgs),
    /// Run an AbcRun manifest locally: redis-server, worker processes and the master.
    Run(abc_operator::local::RunArgs),
    /// Print the AbcRun CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Controller(_)) {
        few_malloc_arenas();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    match cli.command {
        Command::Crd => {
            print!("{}", abc_operator::api::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Controller(args) => match runtime.block_on(abc_operator::controller::run(args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("abc-operator controller: {err:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => match runtime.block_on(abc_operator::local::run(args)) {
            Ok(code) => std::process::ExitCode::from(code),
            Err(err) => {
                eprintln!("abc-operator run: {err:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

/// The controller holds a thousand runs' state for long and allocates little in parallel;
/// glibc's default of up to 8 arenas per core keeps free memory in each thread's own arena.
/// Two arenas: 52 -> 49 MiB of RSS at 1,000 runs (bench S), the same CPU. A
/// `MALLOC_ARENA_MAX` in the environment still wins. Called before any thread starts.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of glibc's allocator; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

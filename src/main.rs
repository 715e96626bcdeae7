//! `abc-operator controller | run MANIFEST | crd`.

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Its options are set before Rust's runtime first allocates, as `allocator::configure` says.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = abc_operator::allocator::configure;

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
    #[cfg(not(target_os = "linux"))]
    abc_operator::allocator::configure();
    let cli = Cli::parse();
    #[cfg(target_os = "linux")]
    if matches!(cli.command, Command::Controller(_)) {
        abc_operator::allocator::no_huge_pages();
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

use clap::Parser;

// The per-record work allocates many small values (JSON, template output);
// mimalloc is markedly faster than glibc malloc at that (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for every HTTPS client (Schema Registry,
    // Slack, BigQuery); without it the first client build panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = alertsvc::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(alertsvc::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "alertsvc failed");
            eprintln!("error: {e:#}");
            let code = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<alertsvc::produce::ProduceError>())
                .map_or(1, |p| p.exit_code());
            std::process::ExitCode::from(code)
        }
    }
}

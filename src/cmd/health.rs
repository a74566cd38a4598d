//! `flora health`: probes a running `flora serve` through its `GET /health`, for container
//! health checks in images that have no curl.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::cli::HealthArgs;
use flora::config::Settings;

/// Exit 0 when the server answers 200 within the timeout, 1 otherwise (with the reason).
pub fn run(settings: &Settings, args: &HealthArgs) -> Result<ExitCode> {
    let url = args.url.clone().unwrap_or_else(|| {
        let s = &settings.config.serve;
        // A server listening on every address is reached on the loopback one.
        let host = match s.host.as_str() {
            "0.0.0.0" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        format!("http://{host}:{}/health", s.port)
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs_f64(args.timeout)))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(resp) if resp.status() == 200 => {
            if !args.quiet {
                println!("healthy: {url}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(mut resp) => {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            eprintln!("unhealthy: {url} answered {}: {body}", resp.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: cannot reach {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

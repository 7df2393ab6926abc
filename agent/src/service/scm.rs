//! The service control manager's side: registering, removing and running the service.

use super::{ENROLLMENT_KEY_FILE, SERVICE_NAME, launch_arguments, stored_enrollment_key};
use crate::config::{AgentConfig, Cli};
use anyhow::Context as _;
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The log is started afresh (the old one kept as `agent.log.1`) when it grows past this.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// How long `uninstall` waits for the service to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// `service run` hands its configuration to `service_main`, which the dispatcher calls on a
/// thread of its own with no way to pass it.
static CONFIG: OnceLock<AgentConfig> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

pub(super) fn install(cli: Cli, flags: &[OsString]) -> anyhow::Result<()> {
    let config = AgentConfig::from(cli);
    let state_dir = std::path::absolute(&config.state_dir)
        .with_context(|| format!("cannot resolve {}", config.state_dir.display()))?;
    crate::platform::create_private_dir(&state_dir)
        .with_context(|| format!("cannot prepare {}", state_dir.display()))?;
    if let Some(key) = &config.enrollment_key {
        std::fs::write(state_dir.join(ENROLLMENT_KEY_FILE), key)
            .context("cannot keep the enrollment key in the state directory")?;
    }
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("cannot open the service control manager (run this as Administrator)")?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: "Upkeep agent".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().context("cannot find this executable")?,
        launch_arguments: launch_arguments(flags, &config.server, &state_dir),
        dependencies: vec![],
        // LocalSystem: scripts install software for every user.
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .with_context(|| format!("cannot register the service {SERVICE_NAME}"))?;
    if let Err(e) = service.set_description("Runs Upkeep maintenance on this computer") {
        eprintln!("upkeep-agent: the service has no description: {e}");
    }
    service
        .start::<&OsStr>(&[])
        .with_context(|| format!("{SERVICE_NAME} is registered but did not start"))?;
    println!(
        "{SERVICE_NAME} is installed and started; it logs to {}",
        state_dir.join("agent.log").display()
    );
    Ok(())
}

pub(super) fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service control manager (run this as Administrator)")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .with_context(|| format!("cannot open the service {SERVICE_NAME}"))?;
    // Marked for deletion first: Windows removes it once it has stopped.
    service
        .delete()
        .with_context(|| format!("cannot remove the service {SERVICE_NAME}"))?;
    let deadline = Instant::now() + STOP_WAIT;
    let mut asked = false;
    loop {
        let state = service.query_status().map(|s| s.current_state);
        if matches!(state, Ok(ServiceState::Stopped) | Err(_)) {
            break;
        }
        if !asked {
            let _ = service.stop();
            asked = true;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{SERVICE_NAME} is marked for removal but did not stop within {STOP_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("{SERVICE_NAME} is stopped and removed");
    Ok(())
}

pub(super) fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = AgentConfig::from(cli);
    if config.enrollment_key.is_none() {
        config.enrollment_key = stored_enrollment_key(&config.state_dir);
    }
    crate::platform::create_private_dir(&config.state_dir)
        .with_context(|| format!("cannot prepare {}", config.state_dir.display()))?;
    let log = open_log(&config.state_dir).context("cannot open agent.log")?;
    crate::init_logging(Mutex::new(log), false);
    let _ = CONFIG.set(config);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).context(
        "cannot reach the service control manager: `service run` is what the service starts; \
         to run the agent at a prompt, leave out `service run`",
    )
}

fn open_log(state_dir: &Path) -> std::io::Result<std::fs::File> {
    let path = state_dir.join("agent.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        std::fs::rename(&path, state_dir.join("agent.log.1"))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file)?;
    Ok(file)
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!("the service stopped with an error: {e:#}");
    }
}

/// Tells the service control manager the service runs, runs the agent until told to stop,
/// then reports it stopped (exit code 1 when the agent could not work at all).
fn serve() -> anyhow::Result<()> {
    let config = CONFIG
        .get()
        .cloned()
        .context("the service started without its configuration")?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            stop.send_replace(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = service_control_handler::register(SERVICE_NAME, handler)
        .context("cannot register the service control handler")?;
    let report = |state, accept, code| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint: Duration::default(),
            process_id: None,
        })
    };
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    )?;
    tracing::info!("service started");
    let result = crate::runtime().and_then(|runtime| {
        runtime.block_on(crate::run(config, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            tracing::info!("the service control manager asks the agent to stop");
        }))
    });
    let code = if result.is_ok() { 0 } else { 1 };
    report(ServiceState::Stopped, ServiceControlAccept::empty(), code)?;
    result
}

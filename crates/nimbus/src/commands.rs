//! Client commands: each parses its arguments into an API request, calls the server
//! through [`ApiClient`], and renders the answer.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nimbus_api::units::{parse_cpu_millis, parse_memory_mib};
use nimbus_api::{
    CreateInstance, Instance, InstanceKind, InstanceSpec, InstanceState, Node, RestartPolicy,
};

use crate::cli::{Cli, Command, CreateArgs, InstanceCommand, NodeCommand, Output};
use crate::client::ApiClient;
use crate::output;
use crate::run;

/// Runs one command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let api = ApiClient::new(&cli.server);
    let out = cli.output;
    match cli.command {
        Command::Up(a) => run::up(&a.server, &a.node).await,
        Command::Server(a) => run::server(&a.server).await,
        Command::Agent(a) => {
            let server = a.join.clone().unwrap_or(cli.server.clone());
            run::agent(&a.node, &server, &a.data_dir, &a.address).await
        }
        Command::Instance(c) => instance(&api, out, c).await,
        Command::Apply { file } => apply(&api, out, &file).await,
        Command::Node(NodeCommand::List) => {
            println!("{}", output::nodes(out, &api.list_nodes().await?));
            Ok(0)
        }
        Command::Node(NodeCommand::Show { name }) => {
            let n = api.get_node(&name).await?;
            println!("{}", output::nodes(out, std::slice::from_ref(&n)));
            Ok(0)
        }
        Command::Node(NodeCommand::Drain {
            name,
            offline,
            no_wait,
            timeout,
        }) => drain(&api, out, &name, offline, no_wait, timeout).await,
        Command::Node(NodeCommand::Undrain { name }) => {
            let n: Node = api
                .post(&format!("/v1/nodes/{name}/undrain"), &serde_json::json!({}))
                .await?;
            println!("{}", output::nodes(out, std::slice::from_ref(&n)));
            Ok(0)
        }
        Command::Events { follow } => events(&api, out, follow).await,
        Command::Image(c) => crate::images::run(&api, out, c).await,
        Command::Backup(c) => crate::backups::backup(&api, out, c).await,
        Command::Store(c) => crate::backups::store(&api, out, c).await,
        Command::Sim(c) => crate::sim::run(&api, c).await,
        Command::Openapi => {
            println!("{}", nimbus_server::http::openapi_json());
            Ok(0)
        }
    }
}

fn create_request(a: &CreateArgs) -> Result<CreateInstance> {
    let kind = if a.vm || a.image.is_some() || a.disk_file.is_some() {
        InstanceKind::Vm
    } else {
        InstanceKind::Process
    };
    let cpu_millis = match (&a.cpu, kind) {
        (Some(c), _) => parse_cpu_millis(c).map_err(|e| anyhow!("--cpu: {e}"))?,
        (None, InstanceKind::Vm) => u64::from(a.vcpus.unwrap_or(1)) * 1000,
        (None, InstanceKind::Process) => 250,
    };
    let memory_mib = parse_memory_mib(&a.memory).map_err(|e| anyhow!("--memory: {e}"))?;
    let disk_mib = a
        .disk_size
        .as_deref()
        .map(parse_memory_mib)
        .transpose()
        .map_err(|e| anyhow!("--disk-size: {e}"))?
        .unwrap_or(0);
    let restart: RestartPolicy =
        serde_json::from_value(serde_json::Value::String(a.restart.clone()))
            .map_err(|_| anyhow!("--restart {:?}: use never, on-failure or always", a.restart))?;
    if kind == InstanceKind::Process && a.command.is_empty() {
        bail!("no command given: put it after --, e.g. nimbus instance create web -- python3 -m http.server 9000");
    }
    let ports = a
        .ports
        .iter()
        .map(|p| {
            p.parse::<nimbus_api::PortSpec>()
                .map_err(|e| anyhow!("--port: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let user_data = match &a.user_data {
        Some(p) => {
            let len = std::fs::metadata(p)
                .with_context(|| format!("--user-data: reading {}", p.display()))?
                .len();
            if len > nimbus_api::instance::MAX_USER_DATA_BYTES as u64 {
                bail!(
                    "--user-data: {} is {len} bytes; at most {} bytes are accepted",
                    p.display(),
                    nimbus_api::instance::MAX_USER_DATA_BYTES
                );
            }
            Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("--user-data: reading {}", p.display()))?,
            )
        }
        None => None,
    };
    let mut ssh_authorized_keys = Vec::new();
    for p in &a.ssh_keys {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("--ssh-key: reading {}", p.display()))?;
        ssh_authorized_keys.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    let image = match (&a.image, &a.disk_file) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(_)) => Some(format!("{}-disk", a.name)),
        (None, None) => None,
    };
    Ok(CreateInstance {
        name: a.name.clone(),
        spec: InstanceSpec {
            kind,
            command: a.command.clone(),
            env: run::parse_kv(&a.env, "--env")?,
            workdir: a.workdir.clone(),
            cpu_millis,
            memory_mib,
            disk_mib,
            restart,
            priority: a.priority,
            expected_runtime_secs: a.expected_runtime,
            node_selector: run::parse_kv(&a.node_selector, "--node-selector")?,
            image,
            disk_image: None,
            vcpus: a.vcpus,
            ports,
            user_data,
            ssh_authorized_keys,
            ha: a.ha,
            backup_every_secs: a
                .backup_every
                .as_deref()
                .map(nimbus_api::units::parse_duration_secs)
                .transpose()
                .map_err(|e| anyhow!("--backup-every: {e}"))?,
            health_check: a.health_check.clone(),
        },
    })
}

async fn instance(api: &ApiClient, out: Output, c: InstanceCommand) -> Result<i32> {
    match c {
        InstanceCommand::Create(a) => {
            let req = create_request(&a)?;
            nimbus_api::validate_name("instance", &req.name).map_err(|e| anyhow!(e))?;
            req.spec.validate().map_err(|e| anyhow!(e))?;
            if let (Some(file), Some(image)) = (&a.disk_file, &req.spec.image) {
                if api.get_image(image).await.is_err() {
                    crate::images::import_disk(api, image, file).await?;
                }
            }
            let (inst, created) = api.create_instance(&req).await?;
            if out == Output::Json {
                println!("{}", output::json(&inst));
            } else if created {
                println!("instance {} created ({})", inst.name, inst.state);
            } else {
                println!(
                    "instance {} already exists with this spec ({})",
                    inst.name, inst.state
                );
            }
        }
        InstanceCommand::List { state, node } => {
            let items = api
                .list_instances(state.as_deref(), node.as_deref())
                .await?;
            println!("{}", output::instances(out, &items));
        }
        InstanceCommand::Show { name } => {
            println!("{}", output::instance(out, &api.get_instance(&name).await?));
        }
        InstanceCommand::Logs { name, follow } | InstanceCommand::Console { name, follow } => {
            logs(api, &name, follow).await?
        }
        InstanceCommand::Pause { name } => action(api, out, &name, "pause").await?,
        InstanceCommand::Resume { name } => action(api, out, &name, "resume").await?,
        InstanceCommand::Stop { name } => action(api, out, &name, "stop").await?,
        InstanceCommand::Start { name } => action(api, out, &name, "start").await?,
        InstanceCommand::Restart { name } => action(api, out, &name, "restart").await?,
        InstanceCommand::Delete { name } => {
            let inst = api.delete_instance(&name).await?;
            if out == Output::Json {
                println!("{}", output::json(&inst));
            } else {
                println!(
                    "instance {name} {}",
                    if inst.state == nimbus_api::InstanceState::Deleted {
                        "deleted"
                    } else {
                        "is being deleted"
                    }
                );
            }
        }
    }
    Ok(0)
}

async fn action(api: &ApiClient, out: Output, name: &str, verb: &str) -> Result<()> {
    let inst = api.instance_action(name, verb).await?;
    if out == Output::Json {
        println!("{}", output::json(&inst));
    } else {
        println!("instance {name}: {verb} requested ({})", inst.state);
    }
    Ok(())
}

async fn logs(api: &ApiClient, name: &str, follow: bool) -> Result<()> {
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    loop {
        let bytes = api.logs(name, 64 * 1024 * 1024).await?;
        if bytes.len() > printed {
            stdout.write_all(&bytes[printed..])?;
            stdout.flush()?;
            printed = bytes.len();
        } else if bytes.len() < printed {
            // A new placement started a new log.
            stdout.write_all(&bytes)?;
            printed = bytes.len();
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn apply(api: &ApiClient, out: Output, file: &std::path::Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let reqs = nimbus_api::specfile::parse_spec_file(&file.display().to_string(), &text)
        .map_err(|e| anyhow!(e))?;
    let mut results = Vec::new();
    for req in &reqs {
        let (inst, created) = api.create_instance(req).await?;
        if out == Output::Table {
            println!(
                "instance {} {}",
                inst.name,
                if created { "created" } else { "unchanged" }
            );
        }
        results.push(inst);
    }
    if out == Output::Json {
        println!("{}", output::json(&results));
    }
    Ok(0)
}

async fn events(api: &ApiClient, out: Output, follow: bool) -> Result<i32> {
    let mut after = 0;
    loop {
        let page = api.events(after, if follow { 30 } else { 0 }).await?;
        for e in &page.items {
            if out == Output::Json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", output::event_line(e));
            }
        }
        after = page.last;
        if !follow && page.items.len() < 1000 {
            return Ok(0);
        }
    }
}

/// Drains a node and, unless told not to, waits until it is empty, showing progress.
async fn drain(
    api: &ApiClient,
    out: Output,
    name: &str,
    offline: bool,
    no_wait: bool,
    timeout: u64,
) -> Result<i32> {
    let n: Node = api
        .post(
            &format!("/v1/nodes/{name}/drain?offline={offline}"),
            &serde_json::json!({}),
        )
        .await?;
    if no_wait {
        println!("{}", output::nodes(out, std::slice::from_ref(&n)));
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let instances = api.list_instances(None, None).await?;
        let left: Vec<&Instance> = instances
            .iter()
            .filter(|i| i.node.as_deref() == Some(name) && i.is_assigned())
            .collect();
        let moving = instances
            .iter()
            .filter(|i| {
                i.recovery
                    .as_ref()
                    .is_some_and(|r| r.from_node == name && i.state != InstanceState::Running)
            })
            .count();
        let live = left.iter().filter(|i| i.migration.is_some()).count();
        if left.is_empty() && moving == 0 {
            bar.finish_and_clear();
            let n = api.get_node(name).await?;
            println!("{}", output::nodes(out, std::slice::from_ref(&n)));
            return Ok(0);
        }
        bar.set_message(format!(
            "draining {name}: {} instance(s) still there ({live} migrating live), {moving} \
             starting elsewhere",
            left.len()
        ));
        if std::time::Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "node {name} still has {} instance(s) after {timeout}s: see `nimbus instance list` \
                 and `nimbus events`",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

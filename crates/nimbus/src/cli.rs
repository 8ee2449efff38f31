//! Command-line arguments of every `nimbus` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "nimbus", version, about = "A private cloud in one binary")]
pub struct Cli {
    /// API server to talk to (client commands).
    #[arg(long, global = true, env = "NIMBUS_SERVER", default_value = nimbus_api::DEFAULT_SERVER)]
    pub server: String,
    /// Output format of client commands.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server and one local agent in one process, on the embedded store.
    Up(UpArgs),
    /// Run the API server and reconcilers only.
    Server(ServerArgs),
    /// Run a node agent that joins a server.
    Agent(AgentArgs),
    /// Create, inspect and control instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Create the instances of a TOML spec file (idempotent).
    Apply {
        /// The spec file (see examples/web.toml).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Build, import, export, replicate, list and delete VM images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Back up instances (VM disks, process data directories), list, restore, prune.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// The chunk store: statistics, verification, garbage collection.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Datacenter simulator on the live scheduler.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Show the event log.
    Events {
        /// Keep printing new events.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print the OpenAPI document of the API.
    Openapi,
}

#[derive(Debug, Args, Clone)]
pub struct ServerOptions {
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: SocketAddr,
    /// Where state is kept.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = ".nimbus")]
    pub data_dir: PathBuf,
    /// Placement policy: first-fit, best-fit (bin-pack) or worst-fit (spread).
    #[arg(long, default_value = "best-fit")]
    pub placement: String,
    /// Queue policy for what does not fit yet: fcfs, sjf or priority.
    #[arg(long, default_value = "fcfs")]
    pub queue: String,
    /// Strict queue order: nothing is placed while the head of the queue waits.
    #[arg(long)]
    pub no_backfill: bool,
    /// Seconds without heartbeats after which a node is declared down and its
    /// instances move (see docs/fault-tolerance.md for the choice of defaults).
    #[arg(long, default_value_t = 2.0)]
    pub node_down_after: f64,
    /// Seconds without heartbeats after which a node is suspect and takes no new
    /// instances (default: half of --node-down-after).
    #[arg(long)]
    pub node_suspect_after: Option<f64>,
    /// Seconds a node back from down waits before it takes new instances (doubled each
    /// time it goes down again within ten minutes; 0: no probation).
    #[arg(long, default_value_t = 5.0)]
    pub node_probation: f64,
}

#[derive(Debug, Args, Clone)]
pub struct NodeOptions {
    /// Node name (defaults to the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// CPU cores to offer (defaults to all).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory to offer, e.g. 8Gi (defaults to all).
    #[arg(long)]
    pub memory: Option<String>,
    /// Disk to offer, e.g. 100Gi (defaults to the data directory's filesystem size).
    #[arg(long)]
    pub disk: Option<String>,
    /// Node labels, k=v (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Seconds between heartbeats (keep well under the server's --node-down-after).
    #[arg(long, default_value_t = 0.5)]
    pub heartbeat_every: f64,
    /// Run instances with the simulated driver (no real processes).
    #[arg(long, hide = true)]
    pub sim: bool,
    /// VM accelerator: kvm or tcg (default: probe by booting a guest with KVM).
    #[arg(long)]
    pub accel: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerOptions,
    #[command(flatten)]
    pub node: NodeOptions,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub server: ServerOptions,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server to join (same as the global --server).
    #[arg(long = "join")]
    pub join: Option<String>,
    /// Where task records and instance files are kept.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = ".nimbus/agent")]
    pub data_dir: PathBuf,
    /// Address peers reach this node at (display only for now).
    #[arg(long, default_value = "")]
    pub address: String,
    #[command(flatten)]
    pub node: NodeOptions,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Create an instance running COMMAND.
    Create(Box<CreateArgs>),
    /// List instances.
    List {
        /// Only instances in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only instances on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show one instance.
    Show { name: String },
    /// Print an instance's output.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Stop an instance.
    Stop { name: String },
    /// Start a stopped or failed instance.
    Start { name: String },
    /// Restart an instance.
    Restart { name: String },
    /// Pause a running VM.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Print a VM's serial console (its output log).
    Console {
        name: String,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Delete an instance (stopping it first).
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// CPU cores, e.g. 0.5 or 500m (default 0.25; VMs: the vcpus).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory limit, e.g. 64Mi or 1Gi.
    #[arg(long, default_value = "128Mi", allow_hyphen_values = true)]
    pub memory: String,
    /// Restart policy: never, on-failure or always.
    #[arg(long, default_value = "never")]
    pub restart: String,
    /// Queue priority (higher first under --queue priority).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Declared runtime in seconds (used by --queue sjf).
    #[arg(long)]
    pub expected_runtime: Option<u64>,
    /// Environment variables, K=V (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Node labels required, k=v (repeatable).
    #[arg(long = "node-selector")]
    pub node_selector: Vec<String>,
    /// Working directory of the command.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Create a virtual machine (QEMU) instead of a process.
    #[arg(long)]
    pub vm: bool,
    /// VM image to boot (see `nimbus image list`).
    #[arg(long)]
    pub image: Option<String>,
    /// VM disk file (raw or qcow2) to import and boot, e.g. a stock cloud image.
    #[arg(long = "disk", conflicts_with = "image")]
    pub disk_file: Option<PathBuf>,
    /// Disk to reserve on the node, e.g. 4Gi (VMs: the size of the instance's disk).
    #[arg(long)]
    pub disk_size: Option<String>,
    /// VM virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// VM port forward HOST:GUEST or GUEST (repeatable).
    #[arg(long = "port", short = 'p')]
    pub ports: Vec<String>,
    /// VM cloud-init user-data file (a #! script or #cloud-config).
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// VM SSH public key file for cloud-init (repeatable).
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<PathBuf>,
    /// When the node goes down: none (mark lost), restart (place again, fresh) or cold
    /// (place again from the latest backup). Default: restart for processes, none for VMs.
    #[arg(long)]
    pub ha: Option<nimbus_api::HaPolicy>,
    /// Take a backup this often while the instance runs, e.g. 30s or 1h (the newest 3
    /// automatic backups are kept).
    #[arg(long)]
    pub backup_every: Option<String>,
    /// Probe the service: tcp:PORT or http:PORT/PATH (a VM's guest port); 3 failures
    /// in a row (2 s apart, after 10 s of grace) count as a crash for --restart.
    #[arg(long)]
    pub health_check: Option<nimbus_api::HealthCheck>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from Debian packages (`tiny`: kernel + busybox initramfs).
    Build {
        /// Which image to build.
        #[arg(value_parser = ["tiny"])]
        recipe: String,
        /// Name to register it under (default: the recipe's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Import a disk image file (raw or qcow2) into the chunk store.
    Import { name: String, file: PathBuf },
    /// Export a disk image to a file.
    Export {
        name: String,
        file: PathBuf,
        /// raw or qcow2 (default: from the file name, else raw).
        #[arg(long)]
        format: Option<String>,
    },
    /// Copy a disk image to a node's store (only the chunks it lacks).
    Replicate {
        name: String,
        #[arg(long = "to")]
        node: String,
    },
    /// List images.
    List,
    /// Show one image.
    Show { name: String },
    /// Delete an image.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a VM's disk or a process's data directory (a running instance is
    /// paused or frozen for the copy).
    Create {
        instance: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List an instance's backups.
    List { instance: String },
    /// Create a new instance from a backup (INSTANCE@NAME).
    Restore {
        backup: String,
        #[arg(long = "as")]
        as_name: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Keep the newest N backups of an instance.
    Prune {
        instance: String,
        #[arg(long)]
        keep_last: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a scenario: every listed policy, side by side; writes CSV, JSON and HTML.
    Run {
        scenario: PathBuf,
        /// Replay this trace instead of the scenario's workload.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Trace format: azure or google (default: detected from the header).
        #[arg(long)]
        format: Option<String>,
        /// Start from the live cluster's nodes and instances.
        #[arg(long)]
        from_cluster: bool,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Policies simulated in parallel (results do not depend on it).
        #[arg(long)]
        threads: Option<usize>,
        /// Print nothing on success.
        #[arg(long)]
        quiet: bool,
    },
    /// Write the HTML report of a run's output directory.
    Report {
        dir: PathBuf,
        /// Open it in a browser if one can be started.
        #[arg(long)]
        open: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Logical vs stored bytes, dedup and compression ratios.
    Stats,
    /// Re-hash every chunk; name images and backups hit by corruption.
    Verify,
    /// Remove chunks that nothing references.
    Gc,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with capacity, allocation, state and labels.
    List,
    /// Show one node.
    Show { name: String },
    /// Move every instance off a node and stop placing new ones there (running VMs are
    /// live-migrated, others stopped, backed up and restored elsewhere; processes are
    /// backed up and restored).
    Drain {
        name: String,
        /// Move running VMs offline (stop, back up, restore) instead of live.
        #[arg(long)]
        offline: bool,
        /// Return at once instead of waiting until the node is empty.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Let a draining node take new instances again.
    Undrain { name: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

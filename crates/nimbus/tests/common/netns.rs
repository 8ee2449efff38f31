//! Multi-node harness: one server on a Linux bridge, each agent in its own network
//! namespace with its own address (ip netns + veth + bridge). A node can be crashed
//! (agent and workloads SIGKILLed), frozen (agent SIGSTOPped, workloads frozen by the
//! cgroup freezer) and thawed, or cut off (its link down) and healed.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{cgroup_roots, remove_node_cgroups, s, Proc, TestCluster};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One agent in its namespace.
pub struct NetNode {
    pub name: String,
    pub netns: String,
    /// The host end of its veth pair (down = cut off).
    pub veth: String,
    pub address: String,
    pub data: PathBuf,
    pub agent: Option<Proc>,
    extra: Vec<String>,
}

/// A server on a bridge and agents in namespaces.
pub struct NetCluster {
    pub c: TestCluster,
    pub nodes: Vec<NetNode>,
    tag: String,
    bridge: String,
    prefix: String,
}

impl Deref for NetCluster {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.c
    }
}

impl DerefMut for NetCluster {
    fn deref_mut(&mut self) -> &mut TestCluster {
        &mut self.c
    }
}

impl NetCluster {
    /// A bridge with the server on `.1`; no agents yet (see [`NetCluster::add_node`]).
    pub fn new(server_extra: &[&str]) -> NetCluster {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() * 7 + n) % 0xffff;
        let tag = format!("{id:04x}");
        let prefix = format!("10.77.{}", (std::process::id() + n * 37) % 250 + 1);
        let bridge = format!("nbr{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let c = TestCluster::server_only(&format!("{prefix}.1:0"), server_extra);
        NetCluster {
            c,
            nodes: Vec::new(),
            tag,
            bridge,
            prefix,
        }
    }

    /// Adds node `name` in a new namespace and starts its agent; waits until ready.
    pub fn add_node(&mut self, name: &str, extra: &[&str]) {
        let i = self.nodes.len() + 1;
        let netns = format!("nns{}{i}", self.tag);
        let veth = format!("nvh{}{i}", self.tag);
        let peer = format!("nvp{}{i}", self.tag);
        let address = format!("{}.{}", self.prefix, 10 + i);
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &netns]);
        ip(&["link", "set", &veth, "master", &self.bridge]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &netns, "link", "set", &peer, "up"]);
        let data = self.c.dir.path().join(format!("agent-{name}"));
        self.nodes.push(NetNode {
            name: name.to_string(),
            netns,
            veth,
            address,
            data,
            agent: None,
            extra: s(extra),
        });
        self.start_agent_of(name);
        self.wait_node(name, "ready", Duration::from_secs(30));
    }

    fn node(&self, name: &str) -> &NetNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut NetNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Starts (or restarts) the agent of `name` in its namespace.
    pub fn start_agent_of(&mut self, name: &str) {
        let url = self.c.url.clone();
        let log = self.c.dir.path().join(format!("agent-{name}.log"));
        let n = self.node_mut(name);
        let mut args = s(&[
            "agent",
            "--server",
            &url,
            "--name",
            name,
            "--data-dir",
            n.data.to_str().unwrap(),
        ]);
        args.extend(n.extra.clone());
        n.agent = Some(Proc::spawn_in(Some(&n.netns), &args, log));
    }

    /// Waits until node `name` is in `state`.
    pub fn wait_node(&self, name: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let n = name.to_string();
        self.c
            .wait_for(&format!("node {name} to be {state}"), timeout, || {
                let (code, v) = self.c.http("GET", &format!("/v1/nodes/{n}"), None);
                (code == 200 && v["state"] == state).then_some(v)
            })
    }

    /// A node crash: its agent and every workload on it SIGKILLed.
    pub fn crash(&mut self, name: &str) {
        if let Some(p) = self.node_mut(name).agent.take() {
            p.kill9();
        }
        remove_node_cgroups(name);
    }

    /// The node's cgroup directory in the freezer hierarchy (v1) or unified one (v2).
    fn freezer(name: &str) -> Option<(PathBuf, &'static str, &'static str)> {
        for root in cgroup_roots() {
            let d = root.join("nimbus").join(name);
            if d.join("cgroup.freeze").exists() {
                return Some((d.join("cgroup.freeze"), "1", "0"));
            }
            if d.join("freezer.state").exists() {
                return Some((d.join("freezer.state"), "FROZEN", "THAWED"));
            }
        }
        None
    }

    /// Freezes the whole node: workloads by the cgroup freezer, the agent by SIGSTOP.
    pub fn freeze(&self, name: &str) {
        if let Some((f, frozen, _)) = Self::freezer(name) {
            std::fs::write(&f, frozen).expect("freeze the node's cgroup");
        }
        let pid = self.node(name).agent.as_ref().expect("agent").pid();
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    }

    /// Thaws a frozen node: workloads first, then the agent.
    pub fn thaw(&self, name: &str) {
        if let Some((f, _, thawed)) = Self::freezer(name) {
            std::fs::write(&f, thawed).expect("thaw the node's cgroup");
        }
        let pid = self.node(name).agent.as_ref().expect("agent").pid();
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }

    /// Cuts the node off the network (its link down), or heals it.
    pub fn set_link(&self, name: &str, up: bool) {
        ip(&[
            "link",
            "set",
            &self.node(name).veth,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            // A frozen agent must run again to die cleanly.
            if let Some(p) = &n.agent {
                unsafe { libc::kill(p.pid() as i32, libc::SIGCONT) };
            }
            if let Some((f, _, thawed)) = Self::freezer(&n.name) {
                let _ = std::fs::write(&f, thawed);
            }
            if let Some(p) = n.agent.take() {
                p.kill9();
            }
        }
        super::kill_processes_mentioning(self.c.dir.path());
        for n in &self.nodes {
            remove_node_cgroups(&n.name);
            let _ = Command::new("ip").args(["netns", "del", &n.netns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

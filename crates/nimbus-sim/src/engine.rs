//! The discrete-event engine: a simulated clock, one event queue, and the live scheduler
//! (`nimbus-sched`) making every placement and queueing decision.
//!
//! # Events
//! Arrivals stream from the (sorted) job list; everything else sits in a binary heap
//! ordered by (time, insertion sequence), so simultaneous events run in the order they
//! were scheduled and a run is fully deterministic. Completions carry a version number:
//! when a job's or host's completion time changes (processor sharing, round-robin
//! preemption, a host failure) the version is bumped and the stale event is skipped.
//!
//! # Scheduling
//! Every placement is `ClusterState::select` + `ClusterState::allocate` of nimbus-sched
//! under the policy's `SchedulerConfig`, and queue order is `nimbus_sched::queue::compare`;
//! a pass reproduces what `nimbus_sched::schedule` decides for the same nodes and pending
//! requests (see the private `queue` module for why the grouped queue is equivalent, and
//! [`RunOptions::verify_with_schedule`], which checks it pass by pass). A pass runs after
//! every arrival, completion, host failure and repair.
//!
//! # Execution models
//! - space-shared: a job runs at full speed from placement to `start + duration`.
//! - time-shared, processor sharing (quantum 0): each host has a virtual clock advancing
//!   at `min(1, cores / demand)`; a job finishes when the host's virtual time has advanced
//!   by its duration. Only the host's earliest finisher has a pending event.
//! - time-shared, round-robin (quantum > 0): a host's jobs wait in a FIFO run queue;
//!   a job gets its cores for up to one quantum, then goes to the back, whenever the run
//!   queue is not empty (with no one waiting it just keeps running).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use nimbus_sched::queue::compare;
use nimbus_sched::{filter, schedule, ClusterState, NodeInfo, Request, Resources, SchedulerConfig};
use rand_distr::{Distribution, Exp};

use crate::metrics::{quantiles, PolicyResult, PriorityStats, Sample, Stats};
use crate::model::{Execution, Job, OnFailure, PolicySpec, Sim};
use crate::queue::{ClassKey, OrderKey, PendingQueue};
use crate::rng::{stream, Rng};

/// Optional behaviour of one run.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called with the number of jobs that reached a final state since the last call
    /// (in batches), for a progress bar.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Also run a full `nimbus_sched::schedule` on a copy of the nodes and the whole
    /// pending queue before every pass and record any difference in
    /// `PolicyResult::schedule_mismatches`. O(nodes + queue) per pass: for tests.
    pub verify_with_schedule: bool,
    /// Record every placement `(job index, node name)` in order in
    /// `PolicyResult::placements`.
    pub record_placements: bool,
}

/// Target number of utilization samples when no interval is given.
const AUTO_SAMPLES: f64 = 400.0;
/// Above this many samples, every other one is dropped and the interval doubled.
const MAX_SAMPLES: usize = 1000;
/// Progress is reported every this many finished jobs.
const PROGRESS_BATCH: u64 = 4096;
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotArrived,
    Queued,
    Running,
    Done,
    Rejected,
    Lost,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Space-shared completion.
    End {
        job: u32,
        ver: u32,
    },
    /// Processor sharing: the host's earliest finisher is done.
    HostNext {
        host: u32,
        ver: u32,
    },
    /// Round-robin: a job's slice ends (quantum expired or job done).
    Slice {
        job: u32,
        ver: u32,
    },
    Fail {
        host: u32,
    },
    Repair {
        host: u32,
    },
    /// A queued job's patience runs out.
    Timeout {
        job: u32,
        ver: u32,
    },
}

/// Versions are kept modulo 2^29 in events (see [`Kind::pack`]).
const VER_MASK: u32 = (1 << 29) - 1;

impl Kind {
    /// Packs the event into 64 bits: kind (3 bits), id (32 bits), version (29 bits). The
    /// heap orders events by (time, packed value): simultaneous events run in a fixed
    /// order (by kind, then id), independent of insertion order.
    fn pack(self) -> u64 {
        let (tag, id, ver) = match self {
            Kind::End { job, ver } => (0, job, ver),
            Kind::HostNext { host, ver } => (1, host, ver),
            Kind::Slice { job, ver } => (2, job, ver),
            Kind::Fail { host } => (3, host, 0),
            Kind::Repair { host } => (4, host, 0),
            Kind::Timeout { job, ver } => (5, job, ver),
        };
        (tag << 61) | (u64::from(id) << 29) | u64::from(ver & VER_MASK)
    }

    fn unpack(p: u64) -> Kind {
        let id = (p >> 29) as u32;
        let ver = (p as u32) & VER_MASK;
        match p >> 61 {
            0 => Kind::End { job: id, ver },
            1 => Kind::HostNext { host: id, ver },
            2 => Kind::Slice { job: id, ver },
            3 => Kind::Fail { host: id },
            4 => Kind::Repair { host: id },
            _ => Kind::Timeout { job: id, ver },
        }
    }
}

/// Bits of a non-negative time; they order like the times.
fn time_bits(t: f64) -> u64 {
    if t > 0.0 {
        t.to_bits()
    } else if t.is_nan() {
        f64::INFINITY.to_bits()
    } else {
        0
    }
}

/// Runtime state of one job.
#[derive(Debug, Clone)]
struct JobRt {
    status: Status,
    host: u32,
    /// Position in the host's member list.
    pos: u32,
    /// Bumped whenever a pending event about this job becomes stale.
    ver: u32,
    interrupted: bool,
    seq: u64,
    queued_at: f64,
    start: f64,
    /// Round-robin: full-speed seconds of work left (at `slice_start`).
    remaining: f64,
    slice_start: f64,
    /// Round-robin: the current slice ends at a quantum boundary.
    bounded: bool,
}

/// Runtime state of one host.
#[derive(Debug)]
struct HostRt {
    up: bool,
    /// Physical millicores.
    cores: u64,
    members: Vec<u32>,
    /// Time-shared: sum of members' cpu demand (millicores).
    demand: u64,
    /// Busy millicores now (for utilization and power).
    busy: f64,
    /// Watts per busy millicore: `(max_w - idle_w) / cores`.
    watts_per_milli: f64,
    ver: u32,
    // Processor sharing.
    vt: f64,
    vt_at: f64,
    /// (finish virtual time bits, job): non-negative f64 bits order like the numbers.
    ps: BinaryHeap<Reverse<(u64, u32)>>,
    /// Time of the pending `HostNext` event, infinite if none.
    next_t: f64,
    // Round-robin.
    ring: VecDeque<u32>,
    running: Vec<u32>,
    free: u64,
    rng: Option<Rng>,
}

/// Time integrals and current totals.
#[derive(Debug, Default)]
struct Acc {
    last_t: f64,
    measured_s: f64,
    energy_j: f64,
    busy_int: f64,
    reserved_int: f64,
    memory_int: f64,
    power_w: f64,
    busy: f64,
    reserved_cpu: f64,
    memory: f64,
    running: u64,
    hosts_up: u64,
    total_cores: f64,
    total_sched_cpu: f64,
    total_memory: f64,
}

#[derive(Debug, Default)]
struct Measures {
    waiting: Vec<f64>,
    execution: Vec<f64>,
    turnaround: Vec<f64>,
    slowdown: Vec<f64>,
    /// Priority of each measured job (parallel to the vectors above).
    priority: Vec<i32>,
    completed: u64,
    rejected_too_large: u64,
    rejected_timeout: u64,
    host_failures: u64,
    interrupted: u64,
    recovered: u64,
    lost: u64,
    events: u64,
    passes: u64,
    finished_unreported: u64,
}

/// What changed since the last pass, which bounds what the pass must try.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// A new job arrived (not yet queued).
    Arrival(u32),
    /// Only this node gained free capacity (a release, or it came back up).
    Node(usize),
    /// Anything may have changed.
    All,
}

struct Head {
    req: Request,
    class: ClassKey,
    order: OrderKey,
    job: u32,
}

struct Engine<'a> {
    sim: &'a Sim,
    jobs: &'a [Job],
    policy: &'a PolicySpec,
    cfg: SchedulerConfig,
    exec: Execution,
    opts: &'a RunOptions<'a>,
    state: ClusterState,
    hosts: Vec<HostRt>,
    js: Vec<JobRt>,
    queue: PendingQueue,
    /// Min-heap of (time bits, packed event).
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    now: f64,
    next_arrival: usize,
    next_seq: u64,
    /// Jobs with a finite duration not yet in a final state (including future arrivals).
    open_finite: usize,
    too_large: HashMap<Resources, bool>,
    /// One node per distinct capacity, to decide "could ever fit" with nimbus-sched.
    capacity_reps: Vec<NodeInfo>,
    acc: Acc,
    m: Measures,
    samples: Vec<Sample>,
    sample_every: f64,
    next_sample: f64,
    mismatches: Vec<String>,
    /// Placements made by the current pass (verification mode).
    pass_log: Vec<(u32, usize)>,
    scratch: Vec<u32>,
    placements: Vec<(u32, String)>,
}

/// Simulates `policy` over `sim`'s hosts and jobs.
pub fn simulate(sim: &Sim, policy: &PolicySpec, opts: &RunOptions<'_>) -> PolicyResult {
    let mut e = Engine::new(sim, policy, opts);
    e.run();
    e.finish()
}

fn ms(t: f64) -> u64 {
    let v = (t * 1000.0).floor();
    if v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

fn exp_draw(rng: &mut Rng, mean: f64) -> f64 {
    match Exp::new(1.0 / mean) {
        Ok(d) => d.sample(rng),
        Err(_) => f64::INFINITY,
    }
}

impl<'a> Engine<'a> {
    fn new(sim: &'a Sim, policy: &'a PolicySpec, opts: &'a RunOptions<'a>) -> Engine<'a> {
        let exec = policy.execution;
        let nodes: Vec<NodeInfo> = sim
            .hosts
            .iter()
            .map(|h| {
                let mut n = h.node.clone();
                n.capacity.cpu_millis = exec.sched_cpu(n.capacity.cpu_millis);
                n
            })
            .collect();
        let mut capacity_reps: Vec<NodeInfo> = Vec::new();
        for n in &nodes {
            if !capacity_reps.iter().any(|r| r.capacity == n.capacity) {
                capacity_reps.push(n.clone());
            }
        }
        let mut acc = Acc::default();
        let hosts: Vec<HostRt> = sim
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let cores = h.node.capacity.cpu_millis;
                acc.total_cores += cores as f64;
                acc.total_sched_cpu += exec.sched_cpu(cores) as f64;
                acc.total_memory += h.node.capacity.memory_mib as f64;
                acc.reserved_cpu += h.node.allocated.cpu_millis as f64;
                acc.memory += h.node.allocated.memory_mib as f64;
                if h.node.schedulable {
                    acc.hosts_up += 1;
                    acc.power_w += h.power.idle_w;
                }
                HostRt {
                    up: h.node.schedulable,
                    cores,
                    members: Vec::new(),
                    demand: 0,
                    busy: 0.0,
                    watts_per_milli: if cores > 0 {
                        (h.power.max_w - h.power.idle_w) / cores as f64
                    } else {
                        0.0
                    },
                    ver: 0,
                    vt: 0.0,
                    vt_at: 0.0,
                    ps: BinaryHeap::new(),
                    next_t: f64::INFINITY,
                    ring: VecDeque::new(),
                    running: Vec::new(),
                    free: cores,
                    rng: h
                        .failures
                        .map(|_| stream(sim.seed, "host-failures", i as u64)),
                }
            })
            .collect();
        let jobs = &sim.jobs[..];
        let js = vec![
            JobRt {
                status: Status::NotArrived,
                host: NONE,
                pos: 0,
                ver: 0,
                interrupted: false,
                seq: 0,
                queued_at: 0.0,
                start: 0.0,
                remaining: 0.0,
                slice_start: 0.0,
                bounded: false,
            };
            jobs.len()
        ];
        let last_arrival = jobs.last().map_or(0.0, |j| j.arrival_s);
        let span = sim.settings.horizon_s.unwrap_or(last_arrival.max(60.0));
        let sample_every = sim
            .settings
            .sample_interval_s
            .unwrap_or(span / AUTO_SAMPLES);
        acc.last_t = 0.0;
        Engine {
            sim,
            jobs,
            policy,
            cfg: policy.scheduler.clone(),
            exec,
            opts,
            state: ClusterState::new(nodes),
            hosts,
            js,
            queue: PendingQueue::new(policy.scheduler.queue),
            heap: BinaryHeap::new(),
            now: 0.0,
            next_arrival: 0,
            next_seq: 0,
            open_finite: jobs.iter().filter(|j| j.duration_s.is_finite()).count(),
            too_large: HashMap::new(),
            capacity_reps,
            acc,
            m: Measures::default(),
            samples: Vec::new(),
            sample_every,
            next_sample: 0.0,
            mismatches: Vec::new(),
            pass_log: Vec::new(),
            scratch: Vec::new(),
            placements: Vec::new(),
        }
    }

    /// Schedules an event; one at a non-finite time never happens and is dropped.
    fn push(&mut self, t: f64, kind: Kind) {
        if !t.is_finite() {
            return;
        }
        self.heap.push(Reverse((time_bits(t), kind.pack())));
    }

    fn run(&mut self) {
        for h in 0..self.hosts.len() {
            if let (Some(f), true) = (self.sim.hosts[h].failures, self.hosts[h].up) {
                if let Some(rng) = self.hosts[h].rng.as_mut() {
                    let t = exp_draw(rng, f.mtbf_s);
                    self.push(t, Kind::Fail { host: h as u32 });
                }
            }
        }
        let horizon = self.sim.settings.horizon_s;
        loop {
            if self.open_finite == 0 && self.next_arrival >= self.jobs.len() {
                // Only jobs that never end (or nothing) are left.
                break;
            }
            let t_heap = self.heap.peek().map(|e| f64::from_bits(e.0 .0));
            let t_arr = self.jobs.get(self.next_arrival).map(|j| j.arrival_s);
            let (t, from_heap) = match (t_heap, t_arr) {
                (Some(h), Some(a)) if h <= a => (h, true),
                (_, Some(a)) => (a, false),
                (Some(h), None) => (h, true),
                (None, None) => break,
            };
            if horizon.is_some_and(|h| t > h) {
                break;
            }
            self.sample_until(t);
            self.advance(t);
            if from_heap {
                let Some(Reverse((_, ev))) = self.heap.pop() else {
                    break;
                };
                self.handle(Kind::unpack(ev));
            } else {
                let j = self.next_arrival as u32;
                self.next_arrival += 1;
                self.m.events += 1;
                self.arrive(j);
            }
        }
        let end = horizon.unwrap_or(self.now);
        self.sample_until(end);
        self.advance(end);
        if let Some(p) = self.opts.progress {
            p(self.m.finished_unreported);
        }
        self.m.finished_unreported = 0;
    }

    /// Integrates energy and utilization up to `t` and moves the clock there.
    fn advance(&mut self, t: f64) {
        let warm = self.sim.settings.warmup_s;
        let from = self.acc.last_t.max(warm);
        if t > from {
            let dt = t - from;
            let a = &mut self.acc;
            a.measured_s += dt;
            a.energy_j += a.power_w * dt;
            a.busy_int += a.busy * dt;
            a.reserved_int += a.reserved_cpu * dt;
            a.memory_int += a.memory * dt;
        }
        if t > self.acc.last_t {
            self.acc.last_t = t;
        }
        if t > self.now {
            self.now = t;
        }
    }

    fn sample_until(&mut self, t: f64) {
        while self.next_sample <= t && self.sample_every > 0.0 {
            let ts = self.next_sample;
            self.advance(ts);
            self.take_sample(ts);
            self.next_sample = ts + self.sample_every;
            if self.samples.len() > MAX_SAMPLES {
                let kept: Vec<Sample> = self.samples.iter().step_by(2).cloned().collect();
                self.samples = kept;
                self.sample_every *= 2.0;
                let last = self.samples.last().map_or(0.0, |s| s.t_s);
                self.next_sample = last + self.sample_every;
            }
        }
    }

    fn take_sample(&mut self, t: f64) {
        // Stranded: free on an up node, yet no waiting job fits there.
        let (mut scpu, mut smem) = (0.0, 0.0);
        if !self.queue.is_empty() {
            let shapes = self.queue.shapes();
            for (i, h) in self.hosts.iter().enumerate() {
                if !h.up {
                    continue;
                }
                let free = self.state.node_free(i);
                if free.is_zero() || shapes.iter().any(|s| free.fits(*s)) {
                    continue;
                }
                scpu += free.cpu_millis as f64;
                smem += free.memory_mib as f64;
            }
        }
        let a = &self.acc;
        let frac = |x: f64, total: f64| if total > 0.0 { x / total } else { 0.0 };
        self.samples.push(Sample {
            t_s: t,
            cpu_busy: frac(a.busy, a.total_cores),
            cpu_reserved: frac(a.reserved_cpu, a.total_sched_cpu),
            memory: frac(a.memory, a.total_memory),
            queued: self.queue.len() as u64,
            running: a.running,
            hosts_up: a.hosts_up,
            stranded_cpu: frac(scpu, a.total_sched_cpu),
            stranded_memory: frac(smem, a.total_memory),
            power_w: a.power_w,
        });
    }

    fn handle(&mut self, kind: Kind) {
        match kind {
            Kind::End { job, ver } => {
                let rt = &self.js[job as usize];
                if rt.ver & VER_MASK != ver || rt.status != Status::Running {
                    return;
                }
                self.m.events += 1;
                let h = rt.host as usize;
                let d = self.busy_of(job);
                self.set_busy(h, self.hosts[h].busy - d);
                self.complete(job);
                self.pass(self.release_hint(h));
            }
            Kind::HostNext { host, ver } => {
                let h = host as usize;
                if self.hosts[h].ver & VER_MASK != ver || !self.hosts[h].up {
                    return;
                }
                self.m.events += 1;
                self.hosts[h].next_t = f64::INFINITY;
                self.ps_advance(h);
                let rate = self.ps_rate(h);
                // Within a nanosecond (relative to the clock) of finishing counts as done.
                let eps = 1e-9 * self.now.max(1.0);
                let mut done = std::mem::take(&mut self.scratch);
                let hs = &mut self.hosts[h];
                while let Some(&Reverse((fv, j))) = hs.ps.peek() {
                    let fv = f64::from_bits(fv);
                    if (fv - hs.vt) / rate > eps {
                        break;
                    }
                    hs.ps.pop();
                    hs.vt = hs.vt.max(fv);
                    done.push(j);
                }
                let jobs = self.jobs;
                for &j in &done {
                    self.hosts[h].demand -= jobs[j as usize].cpu_demand_millis;
                }
                let busy = self.ps_busy(h);
                self.set_busy(h, busy);
                self.ps_reschedule(h);
                let any = !done.is_empty();
                for &j in &done {
                    self.complete(j);
                }
                done.clear();
                self.scratch = done;
                if any {
                    self.pass(self.release_hint(h));
                }
            }
            Kind::Slice { job, ver } => {
                let rt = &self.js[job as usize];
                if rt.ver & VER_MASK != ver || rt.status != Status::Running {
                    return;
                }
                self.m.events += 1;
                self.rr_slice_end(job);
            }
            Kind::Fail { host } => {
                self.m.events += 1;
                self.fail(host as usize);
            }
            Kind::Repair { host } => {
                self.m.events += 1;
                self.repair(host as usize);
            }
            Kind::Timeout { job, ver } => {
                let rt = &self.js[job as usize];
                if rt.ver & VER_MASK != ver || rt.status != Status::Queued {
                    return;
                }
                self.m.events += 1;
                let (class, order) = self.keys(job);
                self.queue.remove(&class, &order);
                self.js[job as usize].status = Status::Rejected;
                self.m.rejected_timeout += 1;
                self.terminal(job);
            }
        }
    }

    fn release_hint(&self, h: usize) -> Hint {
        if self.cfg.backfill {
            Hint::Node(h)
        } else {
            Hint::All
        }
    }

    // ---- arrivals, queueing, passes ----

    fn arrive(&mut self, j: u32) {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        if let Some(h) = job.initial_host {
            let h = h as usize;
            if h < self.hosts.len() {
                self.state.allocate(h, job.resources);
                self.js[j as usize].queued_at = self.now;
                self.start(j, h);
                return;
            }
        }
        if self.too_large(job.resources) {
            self.js[j as usize].status = Status::Rejected;
            self.m.rejected_too_large += 1;
            self.terminal(j);
            return;
        }
        let rt = &mut self.js[j as usize];
        rt.seq = self.next_seq;
        rt.queued_at = self.now;
        self.next_seq += 1;
        self.pass(Hint::Arrival(j));
    }

    /// Whether no node could hold `res` even empty (nimbus-sched's `could_ever_fit`).
    fn too_large(&mut self, res: Resources) -> bool {
        if let Some(&v) = self.too_large.get(&res) {
            return v;
        }
        let req = Request::new("", res, "");
        let v = !self
            .capacity_reps
            .iter()
            .any(|n| filter::could_ever_fit(n, &req));
        self.too_large.insert(res, v);
        v
    }

    fn keys(&self, j: u32) -> (ClassKey, OrderKey) {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        self.queue.keys(
            job.resources,
            job.priority,
            job.declared_runtime_secs,
            self.js[j as usize].seq,
        )
    }

    fn enqueue(&mut self, j: u32) {
        let (class, order) = self.keys(j);
        self.queue.insert(class, order, j);
        let rt = &mut self.js[j as usize];
        rt.status = Status::Queued;
        if let Some(w) = self.sim.settings.max_wait_s {
            let ver = rt.ver;
            let t = rt.queued_at + w;
            self.push(t, Kind::Timeout { job: j, ver });
        }
    }

    fn request(&self, j: u32) -> Request {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        let rt = &self.js[j as usize];
        Request {
            id: String::new(),
            resources: job.resources,
            driver: String::new(),
            node_selector: BTreeMap::new(),
            priority: job.priority,
            expected_runtime_secs: job.declared_runtime_secs,
            queue_seq: rt.seq,
            queued_at_ms: ms(rt.queued_at),
        }
    }

    /// One scheduling pass: what `nimbus_sched::schedule` would place given the current
    /// nodes and pending requests (plus the arriving one), placed.
    fn pass(&mut self, hint: Hint) {
        let arriving = match hint {
            Hint::Arrival(j) => Some(j),
            _ => None,
        };
        if self.queue.is_empty() && arriving.is_none() {
            return;
        }
        self.m.passes += 1;
        let check = self
            .opts
            .verify_with_schedule
            .then(|| self.snapshot(arriving));
        self.pass_log.clear();
        match hint {
            Hint::Arrival(j) if self.cfg.backfill => {
                // Nothing queued fits anywhere (every pass leaves it so), and nothing
                // changed since: only the newcomer can be placed.
                let req = self.request(j);
                match self.state.select(&req, self.cfg.placement) {
                    Some(n) => self.place(j, n),
                    None => self.enqueue(j),
                }
            }
            Hint::Arrival(j) => {
                self.enqueue(j);
                self.merge_pass(None);
            }
            Hint::Node(n) => self.merge_pass(Some(n)),
            Hint::All => self.merge_pass(None),
        }
        if let Some((nodes, pending, now_ms)) = check {
            self.verify(nodes, pending, now_ms);
        }
    }

    /// Walks the queue in nimbus-sched order, one class head at a time. With `only`, the
    /// queue was unplaceable before and only node `only` gained capacity, so a request
    /// that does not fit there fits nowhere (backfill only).
    fn merge_pass(&mut self, only: Option<usize>) {
        if self.queue.is_empty() {
            return;
        }
        let now_ms = ms(self.now);
        let cfg = self.cfg.clone();
        let mut heads: Vec<Head> = self
            .queue
            .heads()
            .map(|(class, order, job)| Head {
                req: self.request(job),
                class,
                order,
                job,
            })
            .collect();
        // Last = first in queue order.
        heads.sort_by(|a, b| compare(&cfg, now_ms, &b.req, &a.req));
        while let Some(h) = heads.pop() {
            let fits_only = match only {
                Some(n) => {
                    filter::ready(self.state.node(n))
                        && self.state.node_free(n).fits(h.req.resources)
                }
                None => true,
            };
            let pick = if fits_only {
                self.state.select(&h.req, cfg.placement)
            } else {
                None
            };
            match pick {
                Some(n) => {
                    self.queue.remove(&h.class, &h.order);
                    self.place(h.job, n);
                    if let Some((order, job)) = self.queue.head(&h.class) {
                        let next = Head {
                            req: self.request(job),
                            class: h.class,
                            order,
                            job,
                        };
                        let at = heads.partition_point(|x| {
                            compare(&cfg, now_ms, &x.req, &next.req) == Ordering::Greater
                        });
                        heads.insert(at, next);
                    }
                }
                None if !cfg.backfill => break,
                None => {}
            }
        }
    }

    fn place(&mut self, j: u32, n: usize) {
        let res = self.jobs[j as usize].resources;
        self.state.allocate(n, res);
        if self.opts.verify_with_schedule {
            self.pass_log.push((j, n));
        }
        if self.opts.record_placements {
            self.placements.push((j, self.state.node(n).name.clone()));
        }
        self.start(j, n);
    }

    fn snapshot(&self, arriving: Option<u32>) -> (Vec<NodeInfo>, Vec<Request>, u64) {
        let mut pending: Vec<Request> = self
            .queue
            .jobs()
            .chain(arriving)
            .map(|j| Request {
                id: format!("j{j}"),
                ..self.request(j)
            })
            .collect();
        pending.sort_by_key(|r| r.queue_seq);
        (self.state.nodes().to_vec(), pending, ms(self.now))
    }

    fn verify(&mut self, nodes: Vec<NodeInfo>, pending: Vec<Request>, now_ms: u64) {
        let plan = schedule(nodes, pending, &self.cfg, now_ms);
        let want: Vec<(String, String)> = plan
            .placements
            .into_iter()
            .map(|p| (p.request_id, p.node))
            .collect();
        let got: Vec<(String, String)> = self
            .pass_log
            .iter()
            .map(|&(j, n)| (format!("j{j}"), self.state.node(n).name.clone()))
            .collect();
        if want != got {
            self.mismatches.push(format!(
                "t={} policy {}: schedule placed {want:?}, the simulator placed {got:?}",
                self.now, self.policy.name
            ));
        }
    }

    // ---- execution ----

    /// Busy millicores a space-shared job adds to its host.
    fn busy_of(&self, j: u32) -> f64 {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        job.cpu_demand_millis.min(job.resources.cpu_millis) as f64
    }

    fn set_busy(&mut self, h: usize, busy: f64) {
        let hs = &mut self.hosts[h];
        let delta = busy - hs.busy;
        hs.busy = busy;
        self.acc.busy += delta;
        if hs.cores > 0 && hs.up {
            self.acc.power_w += hs.watts_per_milli * delta;
        }
    }

    fn start(&mut self, j: u32, h: usize) {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        let hs = &mut self.hosts[h];
        let rt = &mut self.js[j as usize];
        rt.status = Status::Running;
        rt.host = h as u32;
        rt.pos = hs.members.len() as u32;
        rt.start = self.now;
        hs.members.push(j);
        self.acc.running += 1;
        self.acc.reserved_cpu += job.resources.cpu_millis as f64;
        self.acc.memory += job.resources.memory_mib as f64;
        match self.exec {
            Execution::SpaceShared => {
                let busy = self.hosts[h].busy + self.busy_of(j);
                self.set_busy(h, busy);
                if job.duration_s.is_finite() {
                    let ver = self.js[j as usize].ver;
                    self.push(self.now + job.duration_s, Kind::End { job: j, ver });
                }
            }
            Execution::TimeShared { quantum_s, .. } if quantum_s <= 0.0 => {
                self.ps_advance(h);
                let hs = &mut self.hosts[h];
                let fv = hs.vt + job.duration_s;
                hs.ps.push(Reverse((fv.to_bits(), j)));
                hs.demand += job.cpu_demand_millis;
                let busy = self.ps_busy(h);
                self.set_busy(h, busy);
                self.ps_reschedule(h);
            }
            Execution::TimeShared { .. } => {
                let rt = &mut self.js[j as usize];
                rt.remaining = job.duration_s;
                self.hosts[h].ring.push_back(j);
                self.rr_dispatch(h);
            }
        }
    }

    /// A job finished normally: record it and give its resources back.
    fn complete(&mut self, j: u32) {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        let rt = &self.js[j as usize];
        let h = rt.host as usize;
        let (arrival, start) = (job.arrival_s, rt.start);
        if rt.interrupted {
            self.m.recovered += 1;
        }
        self.m.completed += 1;
        if job.initial_host.is_none() && arrival >= self.sim.settings.warmup_s {
            let wait = (start - arrival).max(0.0);
            let exec = self.now - start;
            let turn = wait + exec;
            let floor = job.duration_s.max(self.sim.settings.slowdown_floor_s);
            self.m.waiting.push(wait);
            self.m.execution.push(exec);
            self.m.turnaround.push(turn);
            self.m
                .slowdown
                .push(if floor > 0.0 { turn / floor } else { 1.0 });
            self.m.priority.push(job.priority);
        }
        self.detach(j, h);
        self.js[j as usize].status = Status::Done;
        self.terminal(j);
    }

    /// Removes job `j` from host `h`'s members and the scheduler's allocations.
    fn detach(&mut self, j: u32, h: usize) {
        let jobs = self.jobs;
        let job = &jobs[j as usize];
        let pos = self.js[j as usize].pos as usize;
        let hs = &mut self.hosts[h];
        hs.members.swap_remove(pos);
        if let Some(&moved) = hs.members.get(pos) {
            self.js[moved as usize].pos = pos as u32;
        }
        self.state.release(h, job.resources);
        self.acc.running -= 1;
        self.acc.reserved_cpu -= job.resources.cpu_millis as f64;
        self.acc.memory -= job.resources.memory_mib as f64;
        let rt = &mut self.js[j as usize];
        rt.host = NONE;
        rt.ver = rt.ver.wrapping_add(1);
    }

    fn terminal(&mut self, j: u32) {
        if self.jobs[j as usize].duration_s.is_finite() {
            self.open_finite -= 1;
        }
        self.m.finished_unreported += 1;
        if self.m.finished_unreported >= PROGRESS_BATCH {
            if let Some(p) = self.opts.progress {
                p(self.m.finished_unreported);
            }
            self.m.finished_unreported = 0;
        }
    }

    fn ps_rate(&self, h: usize) -> f64 {
        let hs = &self.hosts[h];
        if hs.demand == 0 {
            1.0
        } else {
            (hs.cores as f64 / hs.demand as f64).min(1.0)
        }
    }

    fn ps_busy(&self, h: usize) -> f64 {
        let hs = &self.hosts[h];
        hs.demand.min(hs.cores) as f64
    }

    fn ps_advance(&mut self, h: usize) {
        let rate = self.ps_rate(h);
        let now = self.now;
        let hs = &mut self.hosts[h];
        hs.vt += rate * (now - hs.vt_at);
        hs.vt_at = now;
    }

    /// Makes sure an event fires no later than the host's next completion. When the
    /// completion moved later, the pending event stays: it fires early, finds nothing
    /// done and reschedules (fewer heap entries than pushing on every change).
    fn ps_reschedule(&mut self, h: usize) {
        let rate = self.ps_rate(h);
        let now = self.now;
        let hs = &mut self.hosts[h];
        let t = match hs.ps.peek() {
            Some(&Reverse((fv, _))) => {
                let fv = f64::from_bits(fv);
                if fv.is_finite() {
                    now + (fv - hs.vt).max(0.0) / rate
                } else {
                    f64::INFINITY
                }
            }
            None => f64::INFINITY,
        };
        if t < hs.next_t {
            hs.ver = hs.ver.wrapping_add(1);
            hs.next_t = t;
            let ver = hs.ver;
            self.push(
                t,
                Kind::HostNext {
                    host: h as u32,
                    ver,
                },
            );
        }
    }

    fn rr_gang(&self, h: usize, j: u32) -> u64 {
        self.jobs[j as usize]
            .cpu_demand_millis
            .min(self.hosts[h].cores)
    }

    fn rr_rate(&self, h: usize, j: u32) -> f64 {
        let d = self.jobs[j as usize].cpu_demand_millis;
        if d == 0 {
            1.0
        } else {
            (self.rr_gang(h, j) as f64 / d as f64).min(1.0)
        }
    }

    fn quantum(&self) -> f64 {
        match self.exec {
            Execution::TimeShared { quantum_s, .. } => quantum_s,
            Execution::SpaceShared => f64::INFINITY,
        }
    }

    /// Starts run-queue heads while their cores are free; if anyone is left waiting,
    /// every running job's slice is cut at its next quantum boundary.
    fn rr_dispatch(&mut self, h: usize) {
        while let Some(&j) = self.hosts[h].ring.front() {
            let g = self.rr_gang(h, j);
            if g > self.hosts[h].free {
                break;
            }
            let hs = &mut self.hosts[h];
            hs.ring.pop_front();
            hs.free -= g;
            hs.running.push(j);
            self.rr_run(h, j);
        }
        if !self.hosts[h].ring.is_empty() {
            let running = self.hosts[h].running.clone();
            for j in running {
                if !self.js[j as usize].bounded {
                    self.rr_bound(h, j);
                }
            }
        }
        let busy = (self.hosts[h].cores - self.hosts[h].free) as f64;
        self.set_busy(h, busy);
    }

    /// Starts an open-ended slice of `j` (until done or preempted).
    fn rr_run(&mut self, h: usize, j: u32) {
        let rate = self.rr_rate(h, j);
        let now = self.now;
        let rt = &mut self.js[j as usize];
        rt.slice_start = now;
        rt.bounded = false;
        rt.ver = rt.ver.wrapping_add(1);
        let (ver, t) = (rt.ver, now + rt.remaining / rate);
        self.push(t, Kind::Slice { job: j, ver });
    }

    /// Cuts `j`'s open-ended slice at its next quantum boundary (if before it finishes).
    fn rr_bound(&mut self, h: usize, j: u32) {
        let q = self.quantum();
        let rate = self.rr_rate(h, j);
        let now = self.now;
        let rt = &mut self.js[j as usize];
        rt.bounded = true;
        let elapsed = now - rt.slice_start;
        let k = (elapsed / q - 1e-9).ceil().max(1.0);
        let end = rt.slice_start + k * q;
        let natural = rt.slice_start + rt.remaining / rate;
        if end < natural {
            rt.ver = rt.ver.wrapping_add(1);
            let ver = rt.ver;
            self.push(end.max(now), Kind::Slice { job: j, ver });
        }
    }

    fn rr_slice_end(&mut self, j: u32) {
        let h = self.js[j as usize].host as usize;
        let rate = self.rr_rate(h, j);
        let g = self.rr_gang(h, j);
        let now = self.now;
        let duration = self.jobs[j as usize].duration_s;
        let rt = &mut self.js[j as usize];
        rt.remaining -= (now - rt.slice_start) * rate;
        let done = rt.remaining <= 1e-9 * duration.abs().max(1.0);
        let hs = &mut self.hosts[h];
        if let Some(i) = hs.running.iter().position(|&r| r == j) {
            hs.running.swap_remove(i);
        }
        hs.free += g;
        if done {
            self.complete(j);
            self.rr_dispatch(h);
            self.pass(self.release_hint(h));
        } else if self.hosts[h].ring.is_empty() {
            let hs = &mut self.hosts[h];
            hs.free -= g;
            hs.running.push(j);
            self.rr_run(h, j);
        } else {
            self.hosts[h].ring.push_back(j);
            self.rr_dispatch(h);
        }
    }

    // ---- failures ----

    fn fail(&mut self, h: usize) {
        if !self.hosts[h].up {
            return;
        }
        self.m.host_failures += 1;
        self.set_busy(h, 0.0);
        let p = self.sim.hosts[h].power;
        let hs = &mut self.hosts[h];
        hs.up = false;
        hs.ps.clear();
        hs.demand = 0;
        hs.vt = 0.0;
        hs.vt_at = self.now;
        hs.ring.clear();
        hs.running.clear();
        hs.free = hs.cores;
        hs.next_t = f64::INFINITY;
        hs.ver = hs.ver.wrapping_add(1);
        let members = std::mem::take(&mut hs.members);
        self.acc.power_w -= p.idle_w;
        self.acc.hosts_up -= 1;
        self.state.set_schedulable(h, false);
        let mut requeued = false;
        for j in members {
            let res = self.jobs[j as usize].resources;
            self.state.release(h, res);
            self.acc.running -= 1;
            self.acc.reserved_cpu -= res.cpu_millis as f64;
            self.acc.memory -= res.memory_mib as f64;
            self.m.interrupted += 1;
            let rt = &mut self.js[j as usize];
            rt.host = NONE;
            rt.ver = rt.ver.wrapping_add(1);
            let requeue = self.sim.settings.on_failure == OnFailure::Requeue
                && self.jobs[j as usize].initial_host.is_none();
            if requeue {
                rt.interrupted = true;
                rt.seq = self.next_seq;
                rt.queued_at = self.now;
                self.next_seq += 1;
                self.enqueue(j);
                requeued = true;
            } else {
                self.js[j as usize].status = Status::Lost;
                self.m.lost += 1;
                self.terminal(j);
            }
        }
        if let (Some(f), Some(rng)) = (self.sim.hosts[h].failures, self.hosts[h].rng.as_mut()) {
            let t = self.now + exp_draw(rng, f.mttr_s);
            self.push(t, Kind::Repair { host: h as u32 });
        }
        if requeued {
            self.pass(Hint::All);
        }
    }

    fn repair(&mut self, h: usize) {
        if self.hosts[h].up {
            return;
        }
        let hs = &mut self.hosts[h];
        hs.up = true;
        self.acc.hosts_up += 1;
        self.acc.power_w += self.sim.hosts[h].power.idle_w;
        self.state.set_schedulable(h, true);
        if let (Some(f), Some(rng)) = (self.sim.hosts[h].failures, self.hosts[h].rng.as_mut()) {
            let t = self.now + exp_draw(rng, f.mtbf_s);
            self.push(t, Kind::Fail { host: h as u32 });
        }
        self.pass(self.release_hint(h));
    }

    // ---- results ----

    fn finish(mut self) -> PolicyResult {
        let m = &mut self.m;
        let (mut queued, mut running) = (0, 0);
        for rt in &self.js {
            match rt.status {
                Status::Queued => queued += 1,
                Status::Running => running += 1,
                _ => {}
            }
        }
        // Per priority first: the overall vectors are sorted in place below.
        let single = m.priority.iter().all(|&p| Some(&p) == m.priority.first());
        let mut groups: BTreeMap<i32, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        if !single {
            for (i, &p) in m.priority.iter().enumerate() {
                let g = groups.entry(p).or_default();
                g.0.push(m.waiting[i]);
                g.1.push(m.turnaround[i]);
            }
        }
        let waiting = Stats::of(&mut m.waiting);
        let turnaround = Stats::of(&mut m.turnaround);
        let by_priority: Vec<PriorityStats> = if single {
            m.priority
                .first()
                .map(|&priority| PriorityStats {
                    priority,
                    waiting: waiting.clone(),
                    turnaround: turnaround.clone(),
                })
                .into_iter()
                .collect()
        } else {
            groups
                .into_iter()
                .map(|(priority, (mut w, mut t))| PriorityStats {
                    priority,
                    waiting: Stats::of(&mut w),
                    turnaround: Stats::of(&mut t),
                })
                .collect()
        };
        let a = &self.acc;
        let over = |x: f64, total: f64| {
            if total > 0.0 && a.measured_s > 0.0 {
                x / (total * a.measured_s)
            } else {
                0.0
            }
        };
        // Samples after the warm-up, like every other measure.
        let warm = self.sim.settings.warmup_s;
        let measured: Vec<&Sample> = self.samples.iter().filter(|s| s.t_s >= warm).collect();
        let n = measured.len().max(1) as f64;
        let scheduler = &self.policy.scheduler;
        PolicyResult {
            policy: self.policy.name.clone(),
            placement: scheduler.placement.to_string(),
            queue: scheduler.queue.to_string(),
            execution: self.exec.label(),
            backfill: scheduler.backfill,
            jobs: self.jobs.len() as u64,
            completed: m.completed,
            measured: waiting.count,
            rejected_too_large: m.rejected_too_large,
            rejected_timeout: m.rejected_timeout,
            unfinished_queued: queued,
            unfinished_running: running,
            waiting,
            execution_time: Stats::of(&mut m.execution),
            turnaround,
            slowdown: Stats::of(&mut m.slowdown),
            by_priority,
            cpu_busy_mean: over(a.busy_int, a.total_cores),
            cpu_reserved_mean: over(a.reserved_int, a.total_sched_cpu),
            memory_mean: over(a.memory_int, a.total_memory),
            stranded_cpu_mean: measured.iter().map(|s| s.stranded_cpu).sum::<f64>() / n,
            stranded_memory_mean: measured.iter().map(|s| s.stranded_memory).sum::<f64>() / n,
            energy_kwh: a.energy_j / 3.6e6,
            mean_power_w: if a.measured_s > 0.0 {
                a.energy_j / a.measured_s
            } else {
                0.0
            },
            host_failures: m.host_failures,
            interrupted: m.interrupted,
            recovered: m.recovered,
            lost: m.lost,
            events: m.events,
            passes: m.passes,
            end_s: self.now,
            waiting_quantiles: quantiles(&m.waiting),
            turnaround_quantiles: quantiles(&m.turnaround),
            samples: std::mem::take(&mut self.samples),
            schedule_mismatches: std::mem::take(&mut self.mismatches),
            placements: std::mem::take(&mut self.placements),
        }
    }
}

//! Benchmarks of the protocol's hot paths; figures go to docs/BENCHMARKS.md.
//!
//! Run: `cargo bench -p starling-protocol --bench protocol`

use std::collections::BTreeMap;
use std::hint::black_box;

use crdts::LWWReg;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use starling_protocol::desired::{DesiredEntry, DesiredState, Revision};
use starling_protocol::hlc::Timestamp;
use starling_protocol::placement::{Capacity, FleetView, Liveness, NodeView, plan_specs};
use starling_protocol::quantity::{Bytes, Millicores};
use starling_protocol::spec::{RuntimeKind, WorkloadSpec};
use starling_protocol::{NodeId, WorkloadName};

fn fleet(n: usize) -> FleetView {
    let nodes = (0..n).map(|i| {
        let id = NodeId::new(format!("node-{i:05}")).expect("valid id");
        let view = NodeView {
            id: id.clone(),
            labels: BTreeMap::from([("zone".to_string(), ["a", "b", "c", "d"][i % 4].to_string())]),
            arch: if i % 4 == 0 {
                "aarch64".into()
            } else {
                "x86_64".into()
            },
            runtimes: [RuntimeKind::Process, RuntimeKind::Docker].into(),
            capacity: Capacity {
                cpu: Millicores(64_000),
                memory: Bytes(128 << 30),
            },
            weight: 1 + (i % 3) as u32,
            liveness: Liveness::Alive,
            departure: Default::default(),
        };
        (id, view)
    });
    FleetView {
        nodes: nodes.collect(),
    }
}

fn spec(i: usize) -> WorkloadSpec {
    let constraint = match i % 10 {
        0 => "[constraints]\nlabels = { zone = \"b\" }\n",
        1 => "[constraints]\narch = [\"aarch64\"]\n",
        _ => "",
    };
    let placement = if i.is_multiple_of(7) {
        "placement = \"bin-pack\"\n"
    } else {
        ""
    };
    WorkloadSpec::from_toml(&format!(
        "name = \"w{i}\"\ncommand = \"sleep\"\nreplicas = {}\n{placement}{constraint}[resources]\ncpu = \"100m\"\nmemory = \"64Mi\"\n",
        1 + i % 3
    ))
    .expect("valid spec")
}

fn desired(n: usize, marker_ms: u64) -> DesiredState {
    let mut state = DesiredState::new();
    let node = NodeId::new("n1").expect("valid id");
    for i in 0..n {
        let s = spec(i);
        state.merge_entry(DesiredEntry {
            name: s.name.clone(),
            register: LWWReg {
                val: Some(Revision::first(s)),
                marker: Timestamp {
                    physical_ms: marker_ms + i as u64,
                    logical: 0,
                    node: node.clone(),
                },
            },
            writes: Vec::new(),
        });
    }
    state
}

fn bench_plan(c: &mut Criterion) {
    let view = fleet(1_000);
    let specs: Vec<WorkloadSpec> = (0..10_000).map(spec).collect();
    let replicas: u32 = specs.iter().map(|s| s.replicas).sum();
    let a = plan_specs(&view, &specs);
    assert_eq!(a.placed.len() as u32, replicas, "every replica fits");
    c.bench_function("plan 10k workloads x 1k nodes", |b| {
        b.iter(|| plan_specs(black_box(&view), black_box(&specs)))
    });
}

fn bench_merge(c: &mut Criterion) {
    let a = desired(10_000, 1_000);
    // b holds the same names, half of them written later (so half the entries change).
    let mut b = desired(10_000, 1_000);
    let later = desired(10_000, 100_000);
    for (name, register) in later.entries().filter(|(n, _)| n.as_str().len() % 2 == 0) {
        b.merge_entry(DesiredEntry {
            name: name.clone(),
            register: register.clone(),
            writes: Vec::new(),
        });
    }
    c.bench_function("merge two 10k-entry states (half differ)", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut mine| mine.merge(black_box(&b)),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("merge two identical 10k-entry states", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut mine| mine.merge(black_box(&a)),
            BatchSize::LargeInput,
        )
    });
}

fn bench_digest(c: &mut Criterion) {
    let a = desired(10_000, 1_000);
    let mut b = a.clone();
    let node = NodeId::new("n2").expect("valid id");
    for i in 0..10 {
        let name = WorkloadName::new(format!("w{}", i * 997)).expect("valid");
        b.write(
            name,
            None,
            Timestamp {
                physical_ms: 1 << 40,
                logical: 0,
                node: node.clone(),
            },
        );
    }
    let (da, db) = (a.digest(), b.digest());
    assert_eq!(da.diff(&db).len(), 10);
    c.bench_function("digest of a 10k-entry state", |bench| {
        bench.iter(|| black_box(&a).digest())
    });
    c.bench_function("diff 10k-entry states differing in 10 names", |bench| {
        bench.iter(|| {
            let buckets = black_box(&da).diff(black_box(&db));
            let wanted = a.wanted(&b.summary(&buckets));
            assert_eq!(wanted.len(), 10);
            wanted
        })
    });
}

criterion_group!(benches, bench_plan, bench_merge, bench_digest);
criterion_main!(benches);

//! Normalizer throughput, one core: `cargo bench -p verity-collector --bench normalize`.
//! Each benchmark parses and derives a batch of distinct lines of one layout.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verity_collector::normalize::{Ctx, FormatHint, normalize_line};
use verity_model::EventBatchBuilder;
use verity_model::event::IngestSource;

const N: usize = 1000;

fn lines(template: &str) -> Vec<String> {
    (0..N)
        .map(|i| template.replace("{i}", &format!("{:04}", i % 10_000)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "istio_text",
            lines(
                r#"[2024-03-01T10:00:00.{i}Z] "GET /api/orders/{i} HTTP/1.1" 200 - via_upstream - "-" 0 512 7 6 "-" "python-requests/2.31" "6c1a2f0e-{i}-4bb8-9d3c-2f5b1a7e9c01" "orders.shop:8080" "10.1.0.7:8080" inbound|8080|| 127.0.0.6:51515 10.1.0.7:8080 10.1.{i}.3:44312 outbound_.8080_._.orders.shop.svc.cluster.local default"#,
            ),
        ),
        (
            "envoy_default",
            lines(
                r#"[2024-03-01T10:00:00.{i}Z] "POST /api/v1/locations/{i} HTTP/2" 204 - 154 0 226 100 "10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb798{i}" "locations" "tcp://10.0.2.1:80""#,
            ),
        ),
        (
            "istio_json",
            lines(
                r#"{"start_time":"2024-03-01T10:00:00.{i}Z","method":"GET","path":"/abc/{i}","protocol":"HTTP/1.1","response_code":404,"response_flags":"-","bytes_received":0,"bytes_sent":19,"duration":1,"upstream_service_time":"1","x_forwarded_for":"172.17.0.1","user_agent":"curl/7.68.0","request_id":"4ba825ec-{i}","authority":"10.103.20.194","upstream_host":"172.17.0.16:8080","upstream_cluster":"outbound|80||frontend.online-boutique.svc.cluster.local","downstream_remote_address":"172.17.0.1:35535","downstream_local_address":"172.17.0.3:8080","route_name":null}"#,
            ),
        ),
        (
            "ztunnel_text",
            lines(
                "2024-05-04T09:59:05.02{i}Z\tinfo\taccess\tconnection complete\tsrc.addr=10.244.1.12:60059 src.workload=\"curl-{i}\" src.namespace=\"default\" src.identity=\"spiffe://cluster.local/ns/default/sa/curl\" dst.addr=10.244.1.10:9080 dst.hbone_addr=\"10.244.1.10:9080\" dst.service=\"productpage.default.svc.cluster.local\" dst.workload=\"productpage-v1\" dst.namespace=\"default\" dst.identity=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\" direction=\"inbound\" bytes_sent=175 bytes_recv=80 duration=\"1ms\"",
            ),
        ),
    ];
    let ctx = Ctx::now(IngestSource::File);
    for (name, input) in &cases {
        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Elements(N as u64));
        group.bench_function("normalize", |b| {
            b.iter(|| {
                for l in input {
                    black_box(normalize_line(black_box(l), FormatHint::Auto, &ctx).ok());
                }
            })
        });
        group.bench_function("normalize_and_append", |b| {
            let mut builder = EventBatchBuilder::with_capacity(N);
            b.iter(|| {
                for l in input {
                    if let Ok(ev) = normalize_line(l, FormatHint::Auto, &ctx) {
                        builder.append(&ev);
                    }
                }
                black_box(builder.finish().ok());
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

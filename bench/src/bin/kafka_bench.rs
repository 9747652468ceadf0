//! Kafka ingest benchmark for a running Verity (`kafka.enabled: true`).
//!
//! `fill` produces messages as fast as the broker takes them, `drain` then watches Verity's
//! `/metrics` until it has consumed them all and reports the rate, and `sustain` produces at a
//! fixed rate while sampling the end-to-end lag (produced minus consumed, from `/metrics`).
//!
//! ```sh
//! verity-kafka-bench fill    --brokers 127.0.0.1:9092 --topic mesh --messages 1000000
//! verity-kafka-bench drain   --admin 127.0.0.1:9464 --messages 1000000
//! verity-kafka-bench sustain --brokers 127.0.0.1:9092 --topic mesh --rate 50000 --seconds 30 --admin 127.0.0.1:9464
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use prost::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    Raw,
    OtlpProto,
}

#[derive(Subcommand)]
enum Cmd {
    Fill {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        messages: usize,
        #[arg(long, value_enum, default_value = "raw")]
        encoding: Encoding,
        /// Log records per OTLP message.
        #[arg(long, default_value_t = 100)]
        records_per_message: usize,
    },
    Drain {
        #[arg(long)]
        admin: SocketAddr,
        /// Messages to wait for (Verity's `verity_kafka_messages_total`).
        #[arg(long)]
        messages: f64,
    },
    Sustain {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        admin: SocketAddr,
    },
}

const PRINCIPALS: usize = 50;

fn line(i: usize) -> String {
    let ms = i % 1000;
    let s = (i / 1000) % 60;
    format!(
        r#"[2026-11-22T10:00:{s:02}.{ms:03}Z] "GET /api/items/{i} HTTP/1.1" 200 - via_upstream - "-" 0 512 3 2 "-" "bench/1.0" "req-{i}" "web.shop:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.1.{p}:40000 outbound_.80_._.web.shop.svc.cluster.local default"#,
        p = i % PRINCIPALS
    )
}

fn producer(brokers: &str) -> anyhow::Result<BaseProducer> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("producer")
}

fn send(p: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    loop {
        match p.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return,
            Err(_) => {
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

fn consumed(admin: SocketAddr) -> anyhow::Result<f64> {
    let r = verity_e2e::http_request(admin, "GET", "/metrics", &[], b"")?;
    let text = String::from_utf8_lossy(&r.body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("verity_kafka_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Fill {
            brokers,
            topic,
            messages,
            encoding,
            records_per_message,
        } => {
            let p = producer(&brokers)?;
            let t0 = Instant::now();
            let mut bytes = 0usize;
            for m in 0..messages {
                let payload = match encoding {
                    Encoding::Raw => line(m).into_bytes(),
                    Encoding::OtlpProto => {
                        let records = (0..records_per_message)
                            .map(|r| verity_e2e::otlp::record(&line(m * records_per_message + r), vec![]))
                            .collect();
                        verity_e2e::otlp::logs_request(records).encode_to_vec()
                    }
                };
                bytes += payload.len();
                send(&p, &topic, &format!("k{}", m % PRINCIPALS), &payload);
            }
            p.flush(Duration::from_secs(120))?;
            println!(
                "produced {messages} messages ({:.1} MB) in {:.2?}",
                bytes as f64 / 1e6,
                t0.elapsed()
            );
        }
        Cmd::Drain { admin, messages } => {
            let start_count = consumed(admin)?;
            let mut t0 = None;
            loop {
                let n = consumed(admin)?;
                if t0.is_none() && n > start_count {
                    t0 = Some((Instant::now(), n));
                }
                if n >= messages {
                    let (t, n0) = t0.unwrap_or((Instant::now(), start_count));
                    let secs = t.elapsed().as_secs_f64().max(1e-3);
                    println!(
                        "consumed {n} messages; {:.0} messages/s after the first ({:.2} s)",
                        (n - n0) / secs,
                        secs
                    );
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cmd::Sustain {
            brokers,
            topic,
            rate,
            seconds,
            admin,
        } => {
            let p = producer(&brokers)?;
            let base = consumed(admin)?;
            let t0 = Instant::now();
            let mut produced = 0u64;
            let mut lags: Vec<f64> = Vec::new();
            let mut next_sample = Instant::now();
            while t0.elapsed() < Duration::from_secs(seconds) {
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                while produced < due {
                    send(
                        &p,
                        &topic,
                        &format!("k{}", produced as usize % PRINCIPALS),
                        line(produced as usize).as_bytes(),
                    );
                    produced += 1;
                }
                p.poll(Duration::ZERO);
                if Instant::now() >= next_sample {
                    let lag = produced as f64 - (consumed(admin)? - base);
                    lags.push(lag.max(0.0));
                    next_sample += Duration::from_millis(100);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            p.flush(Duration::from_secs(60))?;
            lags.sort_by(f64::total_cmp);
            let pct = |q: f64| {
                lags.get(((lags.len() as f64 - 1.0) * q) as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            println!(
                "produced {produced} at {rate}/s for {seconds}s; lag in messages p50 {:.0}, p99 {:.0}, max {:.0} (p99 ≈ {:.1} ms behind)",
                pct(0.5),
                pct(0.99),
                pct(1.0),
                pct(0.99) / rate as f64 * 1000.0
            );
        }
    }
    Ok(())
}

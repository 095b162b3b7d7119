//! A collection's points -> an OTLP `ExportMetricsServiceRequest`: one `ResourceMetrics` per
//! process, under the resource its spans have, with the three metrics of its series. Made
//! once per export interval, so the generated types serve (spans are encoded by hand for their
//! rate; see `export::otlp_encode`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry::{KeyValue as SdkKeyValue, Value as SdkValue};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
        AggregationTemporality, Exemplar as ProtoExemplar, ExponentialHistogram,
        ExponentialHistogramDataPoint, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
};
use opentelemetry_sdk::Resource;
use prost::Message as _;

use super::{histogram, Exemplar, Point};
use crate::{
    config::{Histogram, Temporality},
    export::otlp_encode::resource_message,
    names::errno_name,
    span::attributes::{network_type, peer, transport_name},
};

pub const DURATION: &str = "sendmmsg.duration";
pub const MESSAGES: &str = "sendmmsg.messages";
pub const BYTES: &str = "sendmmsg.bytes";
/// Which way each message of a call went: `sent`, `failed`, or `unsent` (never tried: the call
/// stopped at a failed message, or failed before its first).
pub const OUTCOME: &str = "sendmmsg.message.outcome";

/// The request for `processes`' points (each process's resource and its series).
pub fn request(
    processes: &[(std::sync::Arc<Resource>, Vec<Point>)],
    histogram: &Histogram,
    temporality: Temporality,
    now: SystemTime,
) -> Vec<u8> {
    let temporality = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    } as i32;
    let scope = crate::span::scope();
    let resource_metrics = processes
        .iter()
        .map(|(resource, points)| {
            let (message, schema_url) = resource_message(resource);
            ResourceMetrics {
                resource: opentelemetry_proto::tonic::resource::v1::Resource::decode(message.as_slice()).ok(),
                scope_metrics: vec![ScopeMetrics {
                    // The spans' scope: this sidecar, at this version.
                    scope: Some(InstrumentationScope {
                        name: scope.name().to_owned(),
                        version: scope.version().unwrap_or_default().to_owned(),
                        ..Default::default()
                    }),
                    metrics: metrics(points, histogram, temporality, nanos(now)),
                    schema_url: String::new(),
                }],
                schema_url,
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }.encode_to_vec()
}

fn metrics(points: &[Point], histogram: &Histogram, temporality: i32, now: u64) -> Vec<Metric> {
    let duration = points.iter().map(|p| duration_point(p, histogram, now));
    let duration_data = match histogram {
        Histogram::Exponential => Data::ExponentialHistogram(ExponentialHistogram {
            data_points: duration
                .map(|d| match d {
                    DurationPoint::Exponential(p) => p,
                    DurationPoint::Explicit(_) => unreachable!("one shape per setting"),
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
        Histogram::Explicit(_) => Data::Histogram(ProtoHistogram {
            data_points: duration
                .map(|d| match d {
                    DurationPoint::Explicit(p) => p,
                    DurationPoint::Exponential(_) => unreachable!("one shape per setting"),
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
    };
    let counter = |name: &str, description: &str, unit: &str, data_points| Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: vec![],
        data: Some(Data::Sum(Sum { data_points, aggregation_temporality: temporality, is_monotonic: true })),
    };
    let mut messages = Vec::new();
    let mut bytes = Vec::new();
    for point in points {
        let series = series_attributes(point);
        let error = error_type(point.key.error);
        for (outcome, n) in
            [("sent", point.value.sent), ("failed", point.value.failed), ("unsent", point.value.unsent)]
        {
            if n == 0 {
                continue;
            }
            // A message's own error: none when sent; its errno when it failed; why it was never
            // tried (the call's outcome) when unsent.
            let mut attributes: Vec<KeyValue> =
                series.iter().filter(|kv| kv.key != "error.type").cloned().collect();
            attributes.push(string(OUTCOME, outcome));
            if outcome != "sent" {
                attributes.extend(error.clone().map(|e| string("error.type", &e)));
            }
            // Sent messages of series that differ only by the call's error.type are one point:
            // a metric's points each have attributes of their own.
            match messages.iter_mut().find(|p: &&mut NumberDataPoint| p.attributes == attributes) {
                Some(same) => {
                    if let Some(number_data_point::Value::AsInt(total)) = &mut same.value {
                        *total += n as i64;
                    }
                    same.start_time_unix_nano = same.start_time_unix_nano.min(nanos(point.start));
                }
                None => messages.push(sum_point(point, attributes, n, now)),
            }
        }
        bytes.push(sum_point(point, series, point.value.bytes, now));
    }
    vec![
        Metric {
            name: DURATION.to_owned(),
            description: "Duration of sendmmsg calls, entry to exit, as the kernel timed them".to_owned(),
            unit: "s".to_owned(),
            metadata: vec![],
            data: Some(duration_data),
        },
        counter(MESSAGES, "Messages of sendmmsg calls, by outcome", "{message}", messages),
        counter(BYTES, "Bytes of the messages sendmmsg sent", "By", bytes),
    ]
}

enum DurationPoint {
    Exponential(ExponentialHistogramDataPoint),
    Explicit(HistogramDataPoint),
}

fn duration_point(point: &Point, histogram: &Histogram, now: u64) -> DurationPoint {
    let v = &point.value;
    let seconds = |ns: u64| ns as f64 / 1e9;
    let (min, max) = if v.calls > 0 && v.min_ns != u64::MAX {
        (Some(seconds(v.min_ns)), Some(seconds(v.max_ns)))
    } else {
        (None, None)
    };
    let attributes = series_attributes(point);
    let exemplars = point.exemplars.iter().map(exemplar).collect();
    let start = nanos(point.start);
    match histogram {
        Histogram::Exponential => {
            let buckets = histogram::exponential(&v.buckets);
            DurationPoint::Exponential(ExponentialHistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: v.calls,
                sum: Some(seconds(v.sum_ns)),
                scale: buckets.scale,
                zero_count: 0,
                positive: Some(Buckets { offset: buckets.offset, bucket_counts: buckets.counts }),
                negative: Some(Buckets::default()),
                flags: 0,
                exemplars,
                min,
                max,
                zero_threshold: 0.0,
            })
        }
        Histogram::Explicit(bounds) => DurationPoint::Explicit(HistogramDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: v.calls,
            sum: Some(seconds(v.sum_ns)),
            bucket_counts: histogram::explicit(&v.buckets, bounds),
            explicit_bounds: bounds.iter().map(|b| b.as_secs_f64()).collect(),
            exemplars,
            flags: 0,
            min,
            max,
        }),
    }
}

fn sum_point(point: &Point, attributes: Vec<KeyValue>, n: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: nanos(point.start),
        time_unix_nano: now,
        exemplars: vec![],
        flags: 0,
        value: Some(number_data_point::Value::AsInt(n as i64)),
    }
}

fn exemplar(e: &Exemplar) -> ProtoExemplar {
    ProtoExemplar {
        filtered_attributes: vec![],
        time_unix_nano: nanos(e.time),
        span_id: e.span_id.to_bytes().to_vec(),
        trace_id: e.trace_id.to_bytes().to_vec(),
        value: Some(exemplar::Value::AsDouble(e.duration_ns as f64 / 1e9)),
    }
}

/// A series' attributes: `error.type` (when something failed), `network.transport`,
/// `network.type`, and with series by peer `network.peer.address` and `.port`.
fn series_attributes(point: &Point) -> Vec<KeyValue> {
    let key = &point.key;
    let mut out = Vec::with_capacity(5);
    if let Some(error) = error_type(key.error) {
        out.push(string("error.type", &error));
    }
    if key.family != 0 {
        out.push(string("network.transport", &transport_name(key.family, key.sock_type, key.protocol)));
        if let Some(network_type) = network_type(key.family) {
            out.push(string("network.type", network_type));
        }
    }
    if key.peer_port_be != 0 {
        let ip = match i32::from(key.family) {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
                key.peer_addr[0],
                key.peer_addr[1],
                key.peer_addr[2],
                key.peer_addr[3],
            )),
            _ => IpAddr::V6(Ipv6Addr::from(key.peer_addr)),
        };
        let mut attributes = Vec::with_capacity(2);
        peer(&SocketAddr::new(ip, u16::from_be(key.peer_port_be)), &mut attributes);
        out.extend(attributes.into_iter().map(convert));
    }
    out
}

fn error_type(error: i32) -> Option<String> {
    (error != 0).then(|| errno_name(i64::from(error)))
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

fn convert(kv: SdkKeyValue) -> KeyValue {
    let value = match kv.value {
        SdkValue::I64(n) => any_value::Value::IntValue(n),
        SdkValue::Bool(b) => any_value::Value::BoolValue(b),
        SdkValue::F64(f) => any_value::Value::DoubleValue(f),
        other => any_value::Value::StringValue(other.as_str().into_owned()),
    };
    KeyValue {
        key: kv.key.as_str().to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

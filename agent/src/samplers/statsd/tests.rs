//! Tests of the StatsD parser, aggregation and limits, plus one live test
//! over real UDP.

use super::*;
use nines_shared::{LabelLimits, Labels};
use proptest::prelude::*;
use std::os::fd::AsRawFd;

fn state() -> StatsdState {
    StatsdState::new(&StatsdConfig::default())
}

fn state_with(f: impl FnOnce(&mut StatsdConfig)) -> StatsdState {
    let mut cfg = StatsdConfig::default();
    f(&mut cfg);
    StatsdState::new(&cfg)
}

fn snap(s: &StatsdState) -> Samples {
    let mut out = Samples::default();
    s.sample(&mut out);
    out
}

fn dropped(out: &Samples, reason: &str) -> f64 {
    out.value_of(DROPPED, &[("reason", reason)])
        .expect("every drop reason is reported")
}

fn kind_of(out: &Samples, family: &str) -> Option<MetricKind> {
    out.metadata
        .iter()
        .find(|m| m.name == family)
        .map(|m| m.kind)
}

fn approx(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Every series reported is one the collector accepts.
fn assert_all_valid(out: &Samples) {
    for o in &out.observations {
        assert!(
            o.labels.validate(&LabelLimits::default()).is_ok(),
            "invalid series {}",
            o.labels
        );
    }
}

#[test]
fn parses_every_type() {
    let l = parse_line("a.b:3|c").expect("counter");
    assert_eq!((l.name, l.kind), ("a.b", StatsdType::Counter));
    assert_eq!(l.values, vec![Value::Number(3.0)]);
    assert_eq!(l.rate, 1.0);
    assert!(l.tags.is_empty());

    let g = |s| parse_line(s).expect("gauge").values;
    assert_eq!(g("g:-2.5|g"), vec![Value::GaugeDelta(-2.5)]);
    assert_eq!(g("g:+4|g"), vec![Value::GaugeDelta(4.0)]);
    assert_eq!(g("g:7|g"), vec![Value::GaugeSet(7.0)]);

    for (line, kind) in [
        ("t:12.5|ms", StatsdType::Timer),
        ("t:12.5|h", StatsdType::Histogram),
        ("t:12.5|d", StatsdType::Distribution),
    ] {
        let l = parse_line(line).expect("timing");
        assert_eq!(l.kind, kind);
        assert_eq!(l.values, vec![Value::Number(12.5)]);
    }
    let s = parse_line("users:alice|s").expect("set");
    assert_eq!(s.kind, StatsdType::Set);
    assert_eq!(s.values, vec![Value::Member("alice")]);
}

#[test]
fn parses_multi_values_rates_tags_and_ignores_unknown_fields() {
    let l = parse_line("lat:1:2:3|ms|@0.5|#env:prod,canary,url:http://x:8|c:abc123|T1700000000")
        .expect("dogstatsd line");
    assert_eq!(
        l.values,
        vec![Value::Number(1.0), Value::Number(2.0), Value::Number(3.0)]
    );
    assert_eq!(l.rate, 0.5);
    assert_eq!(
        l.tags,
        vec![
            ("env", Some("prod")),
            ("canary", None),
            ("url", Some("http://x:8"))
        ]
    );
    // Fields after the type in either order.
    let l = parse_line("x:1|c|#a:b|@0.25").expect("tags before rate");
    assert_eq!((l.rate, l.tags), (0.25, vec![("a", Some("b"))]));
}

#[test]
fn refuses_garbage_with_the_reason() {
    for bad in [
        "nocolon|c",
        ":1|c",
        "x:|c",
        "x:1",
        "x:1|",
        "x:abc|c",
        "x:1::2|c",
        "x:-1|c",
        "x:-5|ms",
        "x:NaN|g",
        "x:inf|h",
        "x:+-3|g",
        "x:1|c|@0",
        "x:1|c|@1.5",
        "x:1|c|@x",
        "x:1|c|@-0.5",
    ] {
        assert_eq!(parse_line(bad), Err(DropReason::ParseError), "{bad}");
    }
    for unsupported in [
        "x:1|zz",
        "x:1|C",
        "_e{5,4}:title|text",
        "_sc|redis.can_connect|0",
    ] {
        assert_eq!(
            parse_line(unsupported),
            Err(DropReason::UnsupportedType),
            "{unsupported}"
        );
    }
}

#[test]
fn sanitizes_names_to_prometheus() {
    assert_eq!(sanitize("api.req-count"), "api_req_count");
    assert_eq!(sanitize("1st.metric"), "_1st_metric");
    assert_eq!(sanitize("caf\u{e9} au lait"), "caf__au_lait");
    assert_eq!(sanitize("ok_Name9"), "ok_Name9");
    assert_eq!(sanitize(""), "");
}

#[test]
fn counters_gauges_and_sets_aggregate_with_rates() {
    let s = state();
    s.ingest(b"hits.home:1|c\nhits.home:2:3|c\nhits.home:1|c|@0.1\n");
    s.ingest(b"temp:20|g\ntemp:+5|g\ntemp:-2.5|g\nq:-3|g\n");
    s.ingest(b"users:alice|s\nusers:bob:alice|s\nusers:carol|s|@0.5\n");
    let out = snap(&s);
    assert!(approx(out.value_of("hits_home_total", &[]), 16.0));
    assert_eq!(kind_of(&out, "hits_home_total"), Some(MetricKind::Counter));
    assert_eq!(out.value_of("temp", &[]), Some(22.5));
    // A delta on a new gauge starts from zero.
    assert_eq!(out.value_of("q", &[]), Some(-3.0));
    assert_eq!(kind_of(&out, "temp"), Some(MetricKind::Gauge));
    assert_eq!(out.value_of("users", &[]), Some(3.0));
    assert_eq!(kind_of(&out, "users"), Some(MetricKind::Gauge));
    assert_eq!(out.value_of(PACKETS, &[]), Some(3.0));
    assert_eq!(out.value_of(LINES, &[]), Some(10.0));
    assert_eq!(dropped(&out, "parse_error"), 0.0);
    assert_all_valid(&out);

    // Counters and gauges are cumulative; a set starts over each round.
    s.ingest(b"hits.home:4|c\nusers:dave|s");
    let out = snap(&s);
    assert!(approx(out.value_of("hits_home_total", &[]), 20.0));
    assert_eq!(out.value_of("temp", &[]), Some(22.5));
    assert_eq!(out.value_of("users", &[]), Some(1.0));
    let out = snap(&s);
    assert_eq!(out.value_of("users", &[]), Some(0.0));
}

#[test]
fn timers_are_latency_histograms_in_seconds() {
    let s = state();
    s.ingest(b"api.latency:50|ms\napi.latency:120:900|ms");
    // Sampled at 1/4: stands for four observations.
    s.ingest(b"api.latency:3000|ms|@0.25");
    let out = snap(&s);
    let f = "api_latency_seconds";
    assert_eq!(kind_of(&out, f), Some(MetricKind::Histogram));
    let unit = out
        .metadata
        .iter()
        .find(|m| m.name == f)
        .map(|m| m.unit.as_str());
    assert_eq!(unit, Some("seconds"));
    let b = |le| out.value_of("api_latency_seconds_bucket", &[("le", le)]);
    assert_eq!(b("0.05"), Some(1.0));
    assert_eq!(b("0.1"), Some(1.0));
    assert_eq!(b("0.25"), Some(2.0));
    assert_eq!(b("1"), Some(3.0));
    assert_eq!(b("2.5"), Some(3.0));
    assert_eq!(b("5"), Some(7.0));
    assert_eq!(b("+Inf"), Some(7.0));
    assert!(approx(out.value_of("api_latency_seconds_sum", &[]), 13.07));
    assert_eq!(out.value_of("api_latency_seconds_count", &[]), Some(7.0));
    assert_all_valid(&out);
}

#[test]
fn dogstatsd_histograms_and_distributions_keep_their_unit() {
    let s = state();
    s.ingest(b"payload:0.3|h|@0.3\npayload:7|d\nreq.time_seconds:250|ms");
    let out = snap(&s);
    assert_eq!(kind_of(&out, "payload"), Some(MetricKind::Histogram));
    // 1/0.3 rounds to 3 observations.
    assert_eq!(out.value_of("payload_count", &[]), Some(4.0));
    assert_eq!(out.value_of("payload_bucket", &[("le", "0.3")]), Some(3.0));
    assert_eq!(out.value_of("payload_bucket", &[("le", "5")]), Some(3.0));
    assert_eq!(out.value_of("payload_bucket", &[("le", "10")]), Some(4.0));
    assert!(approx(out.value_of("payload_sum", &[]), 7.9));
    // A name already ending in the unit does not get it twice.
    assert_eq!(
        out.value_of("req_time_seconds_bucket", &[("le", "0.25")]),
        Some(1.0)
    );
}

#[test]
fn tags_become_labels() {
    let s = state();
    s.ingest(
        b"req:1|c|#env:prod,canary,my.tag:a b,env:dev,__secret:x,instance:h9,job:j,empty:,le:3\n\
          lat:10|ms|#le:3,route:/a",
    );
    let out = snap(&s);
    let counter = out
        .observations
        .iter()
        .find(|o| o.labels.metric_name() == Some("req_total"))
        .expect("counter reported");
    assert_eq!(
        counter.labels,
        Labels::new(
            "req_total",
            [
                ("env", "prod"),
                ("canary", "true"),
                ("my_tag", "a b"),
                ("exported_instance", "h9"),
                ("exported_job", "j"),
                ("le", "3"),
            ]
        )
    );
    // On a histogram `le` is the bucket bound, so the tag is renamed.
    assert_eq!(
        out.value_of(
            "lat_seconds_bucket",
            &[("exported_le", "3"), ("route", "/a"), ("le", "0.01")]
        ),
        Some(1.0)
    );
    assert_all_valid(&out);
}

#[test]
fn distinct_tag_sets_are_distinct_series() {
    let s = state();
    s.ingest(b"r:1|c|#code:200\nr:1|c|#code:500\nr:2|c|#code:200\nr:1|c");
    let out = snap(&s);
    assert_eq!(out.value_of("r_total", &[("code", "200")]), Some(3.0));
    assert_eq!(out.value_of("r_total", &[("code", "500")]), Some(1.0));
    assert_eq!(out.value_of("r_total", &[]), Some(1.0));
}

#[test]
fn garbage_and_limits_are_counted_by_reason() {
    let s = state_with(|c| {
        c.max_series = 2 + (LATENCY_BUCKETS_SECONDS.len() + 3);
        c.max_name_len = 10;
        c.max_tags = 2;
    });
    s.ingest(b"a:1|c\nb:1|c\nc:1|ms");
    s.ingest(b"d:1|c\nd:1|c|#x:1\na:2|c");
    s.ingest(b"verylongname:1|c\na:1|c|#k:verylongvalue\na:1|c|#x,y,z");
    s.ingest(b"garbage\n\xff\xfe:1|c\n__x:1|c\nx:1|q\n_sc|svc|0");
    let out = snap(&s);
    // a, b and c (a histogram costing 22) fill the budget of 24.
    assert_eq!(dropped(&out, "too_many_series"), 2.0);
    assert_eq!(dropped(&out, "name_too_long"), 2.0);
    assert_eq!(dropped(&out, "too_many_tags"), 1.0);
    assert_eq!(dropped(&out, "parse_error"), 3.0);
    assert_eq!(dropped(&out, "unsupported_type"), 2.0);
    assert_eq!(out.value_of(LINES, &[]), Some(14.0));
    assert_eq!(out.value_of(PACKETS, &[]), Some(4.0));
    assert_eq!(out.value_of("a_total", &[]), Some(3.0));
    assert_eq!(out.value_of("d_total", &[]), None);
    assert_all_valid(&out);
}

#[test]
fn one_exposed_name_has_one_type() {
    let s = state();
    s.ingest(b"lat:1|ms\nlat_seconds:1|g\nlat_seconds_sum:1|g\nlat_seconds_count:2|g");
    s.ingest(b"users:a|s\nusers:1|g\nnines_statsd_packets:1|c\nnines_statsd_lines_total:1|g");
    // One StatsD name may carry several types while the exposed names
    // differ (lat_total, lat_bucket...), but not a gauge `lat` beside a
    // histogram `lat`.
    s.ingest(b"lat:1|c\nlat:1|h\nlat:1|g");
    let out = snap(&s);
    assert_eq!(dropped(&out, "type_conflict"), 7.0);
    assert_eq!(out.value_of("lat_seconds_count", &[]), Some(1.0));
    assert_eq!(out.value_of("users", &[]), Some(1.0));
    assert_eq!(out.value_of(PACKETS, &[]), Some(3.0));
    assert_eq!(out.value_of("lat_total", &[]), Some(1.0));
    assert_eq!(out.value_of("lat_count", &[]), Some(1.0));
    assert_eq!(out.value_of("lat", &[]), None);
    assert_all_valid(&out);
}

#[test]
fn an_oversized_packet_keeps_its_whole_lines() {
    let s = state_with(|c| c.max_packet_bytes = 12);
    // "a:1|c\nb:2|c\n" is 12 bytes: the limit falls just before "c:3|c",
    // which is lost but counted.
    s.ingest(b"a:1|c\nb:2|c\nc:3|c\n");
    s.ingest(b"a:1|c\nbb:22|c\n");
    let out = snap(&s);
    assert_eq!(out.value_of("a_total", &[]), Some(2.0));
    assert_eq!(out.value_of("b_total", &[]), Some(2.0));
    assert_eq!(out.value_of("c_total", &[]), None);
    assert_eq!(out.value_of("bb_total", &[]), None);
    assert_eq!(dropped(&out, "parse_error"), 2.0);
    assert_eq!(out.value_of(LINES, &[]), Some(5.0));
}

#[test]
fn blank_lines_and_crlf_are_framing() {
    let s = state();
    s.ingest(b"\n\na:1|c\r\n  \nb:2|g\n\n");
    let out = snap(&s);
    assert_eq!(out.value_of(LINES, &[]), Some(2.0));
    assert_eq!(out.value_of("a_total", &[]), Some(1.0));
    assert_eq!(out.value_of("b", &[]), Some(2.0));
}

/// A state that resolves every line the full way.
fn state_without_resolution() -> StatsdState {
    let s = state();
    s.lock().registry.resolved_max = 0;
    s
}

/// Every value of every series, the listener's counters included.
fn values(out: &Samples) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = out
        .observations
        .iter()
        .map(|o| (o.labels.to_string(), o.value.to_bits()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_line_of_a_known_shape_is_checked_and_applied_as_the_first_was() {
    let s = state();
    s.ingest(b"r:1|c|#code:200\nt:100|ms|#a:b\ng:5|g\nu:x|s");
    assert_eq!(s.lock().registry.resolved.len(), 4);
    // The same names, types and tags again: rates and values are still
    // checked, and a line with one bad value applies none of them.
    s.ingest(b"r:2|c|@0.5|#code:200\nr:x|c|#code:200\nr:1|c|@2|#code:200");
    s.ingest(b"t:200:abc|ms|#a:b\nt:300:400|ms|@0.5|#a:b|c:container");
    s.ingest(b"g:+3|g\ng:+-3|g\nu:y|s\nu:x|s\ng:-1|g|#extra:tag");
    let out = snap(&s);
    assert_eq!(out.value_of("r_total", &[("code", "200")]), Some(5.0));
    assert_eq!(
        out.value_of("t_seconds_count", &[("a", "b")]),
        Some(5.0),
        "one, then two timings sampled at 0.5"
    );
    assert!(approx(
        out.value_of("t_seconds_sum", &[("a", "b")]),
        0.1 + 0.6 + 0.8
    ));
    assert_eq!(out.value_of("g", &[]), Some(8.0));
    assert_eq!(out.value_of("g", &[("extra", "tag")]), Some(-1.0));
    assert_eq!(out.value_of("u", &[]), Some(2.0));
    assert_eq!(dropped(&out, "parse_error"), 4.0);
}

#[test]
fn long_and_short_keys_resolve_alike() {
    let s = state();
    let long = format!("long:1|c|#tag:{}", "v".repeat(INLINE_KEY_BYTES));
    let edge = format!(
        "e:1|c|#t:{}",
        "v".repeat(INLINE_KEY_BYTES - "e|c|#t:".len())
    );
    for _ in 0..3 {
        s.ingest(long.as_bytes());
        s.ingest(edge.as_bytes());
        s.ingest(b"short:1|c");
    }
    assert_eq!(s.lock().registry.resolved.len(), 3);
    let out = snap(&s);
    let v = "v".repeat(INLINE_KEY_BYTES);
    assert_eq!(out.value_of("long_total", &[("tag", &v)]), Some(3.0));
    let v = "v".repeat(INLINE_KEY_BYTES - "e|c|#t:".len());
    assert_eq!(out.value_of("e_total", &[("t", &v)]), Some(3.0));
    assert_eq!(out.value_of("short_total", &[]), Some(3.0));
}

#[test]
fn a_refused_line_is_not_remembered() {
    let s = state_with(|c| c.max_series = 1);
    s.ingest(b"a:1|c\nb:1|c\nb:1|c\n__x:1|c\n__x:1|c");
    assert_eq!(s.lock().registry.resolved.len(), 1);
    let out = snap(&s);
    assert_eq!(dropped(&out, "too_many_series"), 2.0);
    assert_eq!(dropped(&out, "parse_error"), 2.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_yield_valid_series(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8)
    ) {
        let s = state();
        for p in &packets {
            s.ingest(p);
        }
        let out = snap(&s);
        assert_all_valid(&out);
        let applied_or_dropped = out.value_of(LINES, &[]).unwrap_or(-1.0);
        prop_assert!(applied_or_dropped >= 0.0);
    }

    #[test]
    fn statsd_shaped_lines_never_panic_and_yield_valid_series(
        lines in proptest::collection::vec(
            "[a-z0-9._\\-é]{0,12}:[-+0-9.:a-z]{0,10}\\|(c|g|ms|h|d|s|x)(\\|@[0-9.]{1,4})?(\\|#[a-z0-9_:.,\\-]{0,20})?",
            1..20,
        )
    ) {
        let s = state();
        s.ingest(lines.join("\n").as_bytes());
        let out = snap(&s);
        assert_all_valid(&out);
        let total = out.value_of(LINES, &[]).unwrap_or(0.0);
        let dropped: f64 = DropReason::ALL.iter().map(|r| dropped(&out, r.label())).sum();
        prop_assert!(dropped <= total);
    }

    #[test]
    fn lines_resolved_before_give_what_the_full_path_gives(
        lines in proptest::collection::vec(
            "[ab.]{1,2}:[-+0-9.:x]{1,5}\\|(c|g|ms|h|s|x)(\\|@[0-9.x]{1,4})?(\\|#[ab:,]{0,6})?(\\|c:[a-z]{0,3})?",
            1..40,
        )
    ) {
        let packet = lines.join("\n");
        let (fast, full) = (state(), state_without_resolution());
        for s in [&fast, &full] {
            // Twice, so the second time finds the shapes the first left.
            s.ingest(packet.as_bytes());
            s.ingest(packet.as_bytes());
        }
        prop_assert_eq!(values(&snap(&fast)), values(&snap(&full)));
    }

    #[test]
    fn sanitized_names_are_valid(raw in "\\PC{1,20}") {
        let s = sanitize(&raw);
        prop_assert!(nines_shared::is_valid_metric_name(&s));
        prop_assert!(nines_shared::is_valid_label_name(&s));
    }

    #[test]
    fn plain_decimals_read_as_str_parse_reads_them(
        raw in "[0-9]{0,18}(\\.[0-9]{0,18})?|[0-9.+eE-]{1,12}",
    ) {
        if let Some(x) = plain_decimal(&raw) {
            prop_assert_eq!(Some(x.to_bits()), raw.parse::<f64>().ok().map(f64::to_bits), "{}", raw);
        }
    }

    #[test]
    fn equal_keys_hash_equally_and_lengths_count(
        a in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        use std::hash::BuildHasher;
        let h = KeyHashing::new();
        prop_assert_eq!(h.hash_one(a.as_slice()), h.hash_one(a.clone().as_slice()));
        let mut longer = a.clone();
        longer.push(0);
        prop_assert_ne!(h.hash_one(a.as_slice()), h.hash_one(longer.as_slice()));
    }
}

#[test]
fn plain_decimals_cover_the_usual_values_only() {
    for (s, x) in [
        ("0", 0.0),
        ("42", 42.0),
        ("12.5", 12.5),
        (".5", 0.5),
        ("3.", 3.0),
    ] {
        assert_eq!(plain_decimal(s), Some(x), "{s}");
    }
    for s in [
        "",
        ".",
        "1.2.3",
        "-1",
        "+1",
        "1e3",
        "0x10",
        "1234567890123456",
        "inf",
    ] {
        assert_eq!(plain_decimal(s), None, "{s}");
    }
}

#[test]
fn registries_hash_keys_with_their_own_seeds() {
    use std::hash::BuildHasher;
    let key = b"checkout.latency|ms|#route:pay".as_slice();
    let hashes: HashSet<u64> = (0..8).map(|_| KeyHashing::new().hash_one(key)).collect();
    assert!(hashes.len() > 1, "every registry hashed {key:?} alike");
}

#[tokio::test]
async fn live_udp_packets_reach_the_snapshot() {
    let listener = StatsdListener::bind(StatsdConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..StatsdConfig::default()
    })
    .expect("bind statsd listener");
    let addr = listener.local_addr().expect("local address");
    let state = listener.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(listener.run(stop_rx));

    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client
        .send_to(b"checkout.latency:50|ms|#route:pay", addr)
        .expect("send");
    client
        .send_to(
            b"checkout.latency:120|ms|#route:pay\ncheckout.latency:900|ms|#route:pay\n",
            addr,
        )
        .expect("send");
    client.send_to(b"checkout.count:3|c", addr).expect("send");

    let out = crate::test_support::poll_until(Duration::from_secs(10), "the packets", || {
        let out = snap(&state);
        (out.value_of(PACKETS, &[]) == Some(3.0)).then_some(out)
    })
    .await;
    let route = [("route", "pay")];
    let b = |le| {
        out.value_of(
            "checkout_latency_seconds_bucket",
            &[("route", "pay"), ("le", le)],
        )
    };
    assert_eq!(b("0.05"), Some(1.0));
    assert_eq!(b("0.1"), Some(1.0));
    assert_eq!(b("0.25"), Some(2.0));
    assert_eq!(b("1"), Some(3.0));
    assert_eq!(b("+Inf"), Some(3.0));
    assert!(approx(
        out.value_of("checkout_latency_seconds_sum", &route),
        1.07
    ));
    assert_eq!(
        out.value_of("checkout_latency_seconds_count", &route),
        Some(3.0)
    );
    assert_eq!(out.value_of("checkout_count_total", &[]), Some(3.0));
    assert_eq!(out.value_of(LINES, &[]), Some(4.0));

    stop_tx.send(true).expect("listener still running");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("listener stops when told")
        .expect("listener task did not panic");
}

/// A listener on an ephemeral loopback port with `max_packet_bytes`, and
/// a client socket to send to it.
fn listener_and_client(max_packet_bytes: usize) -> (StatsdListener, std::net::UdpSocket) {
    let listener = StatsdListener::bind(StatsdConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        max_packet_bytes,
        ..StatsdConfig::default()
    })
    .expect("bind statsd listener");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client
        .connect(listener.local_addr().expect("address"))
        .expect("connect client");
    (listener, client)
}

/// The datagrams counted so far, without reading the socket.
fn packets_applied(state: &StatsdState) -> u64 {
    state.lock().registry.packets
}

#[tokio::test]
async fn the_listener_applies_a_burst_of_several_batches_whole() {
    let (listener, client) = listener_and_client(65_535);
    let state = listener.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(listener.run(stop_rx));
    // More than one drain reads at a wake-up, over several recvmmsg
    // batches, each datagram with lines for two series.
    let burst = DRAIN_MAX + RECEIVE_BATCH + 5;
    for i in 0..burst {
        client
            .send(format!("burst:1|c\nburst.size:{i}|ms").as_bytes())
            .expect("send");
    }
    // Whatever the kernel had no room for (a small net.core.rmem_max) is
    // counted by it, and the rest reaches the registry.
    let socket = state.socket.clone().expect("a bound listener's socket");
    crate::test_support::poll_until(Duration::from_secs(10), "the burst", || {
        let kernel = meminfo(socket.as_raw_fd()).map_or(0, |i| i[libc::SK_MEMINFO_DROPS as usize]);
        (packets_applied(&state) + u64::from(kernel) == burst as u64).then_some(())
    })
    .await;
    let applied = packets_applied(&state) as f64;
    let out = snap(&state);
    assert_eq!(out.value_of("burst_total", &[]), Some(applied));
    assert_eq!(out.value_of("burst_size_seconds_count", &[]), Some(applied));
    assert_eq!(out.value_of(LINES, &[]), Some(2.0 * applied));
    assert_eq!(dropped(&out, KERNEL_DROPS), burst as f64 - applied);
    assert_eq!(dropped(&out, "parse_error"), 0.0);
    stop_tx.send(true).expect("listener still running");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("listener stops when told")
        .expect("listener task did not panic");
}

#[tokio::test]
async fn the_listener_reads_datagrams_that_come_after_a_quiet_spell() {
    let (listener, client) = listener_and_client(65_535);
    let state = listener.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(listener.run(stop_rx));
    // Each datagram waits for the one before to be read by the listener
    // (not the round). Every other one is sent only once a later drain
    // found nothing, so it finds the listener waiting for the socket;
    // the others find it pausing between drains.
    for sent in 1..=6u64 {
        client.send(b"spell:1|c").expect("send");
        let read_at =
            crate::test_support::poll_until(Duration::from_secs(10), "the datagram", || {
                let intake = state.lock();
                (intake.registry.packets == sent).then_some(intake.last_drain)
            })
            .await;
        if sent % 2 == 1 {
            crate::test_support::poll_until(Duration::from_secs(10), "an empty drain", || {
                (state.lock().last_drain != read_at).then_some(())
            })
            .await;
        }
    }
    assert_eq!(snap(&state).value_of("spell_total", &[]), Some(6.0));
    stop_tx.send(true).expect("listener still running");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("listener stops when told")
        .expect("listener task did not panic");
}

#[test]
fn the_round_reads_what_the_socket_holds_before_reporting() {
    let (listener, client) = listener_and_client(65_535);
    // No receive task runs: only the round reads the socket.
    let state = listener.state();
    let burst = 2 * RECEIVE_BATCH + 1;
    for _ in 0..burst {
        client.send(b"queued:2|c").expect("send");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = snap(&state);
        if out.value_of(PACKETS, &[]) == Some(burst as f64) {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the round read {:?} of {burst} datagrams",
            out.value_of(PACKETS, &[])
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(out.value_of("queued_total", &[]), Some(2.0 * burst as f64));
}

#[test]
fn datagrams_over_the_limit_keep_their_whole_lines_when_received() {
    let (listener, client) = listener_and_client(20);
    let state = listener.state();
    // Exactly the limit: read whole.
    let exact = b"a:1|c\nb:2|c\nccc:3|c\n";
    assert_eq!(exact.len(), 20);
    client.send(exact).expect("send");
    // One byte over: the kernel cuts it to the 21-byte buffer, and only
    // the lines ending within 20 bytes count.
    client.send(b"a:1|c\nb:2|c\ndddd:4|c\n").expect("send");
    // Far over (the kernel's MSG_TRUNC): the same.
    let long = format!("a:1|c\neeee:5|c\n{}", "f:6|c\n".repeat(500));
    client.send(long.as_bytes()).expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = snap(&state);
        if out.value_of(PACKETS, &[]) == Some(3.0) {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "datagrams not read");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(out.value_of("a_total", &[]), Some(3.0));
    assert_eq!(out.value_of("b_total", &[]), Some(4.0));
    assert_eq!(out.value_of("ccc_total", &[]), Some(3.0));
    assert_eq!(out.value_of("dddd_total", &[]), None);
    assert_eq!(out.value_of("eeee_total", &[]), Some(5.0));
    assert_eq!(out.value_of("f_total", &[]), None);
    // One line each for what the two long datagrams lost.
    assert_eq!(dropped(&out, "parse_error"), 2.0);
    assert_eq!(out.value_of(LINES, &[]), Some(3.0 + 3.0 + 3.0));
}

#[test]
fn the_pause_keeps_the_buffer_a_quarter_full_and_stays_bounded() {
    let buffer = 400_000;
    let mut p = Pacing::new();
    assert_eq!(p.pause(), PAUSE_FIRST);
    // A steady 1 MB/s into a 400 kB buffer: a quarter fills in 100 ms.
    for _ in 0..10 {
        p.drained(50_000, buffer, Duration::from_millis(50));
    }
    let pause = p.pause().as_secs_f64();
    assert!((pause - 0.1).abs() < 1e-6, "{pause}");
    // Heavy traffic: no pause.
    p.drained(200_000, buffer, Duration::from_millis(1));
    assert_eq!(p.pause(), Duration::ZERO);
    // Traffic falling away: the pause at most doubles per drain, up to
    // the bound.
    let mut last = p.pause();
    for _ in 0..40 {
        p.drained(0, buffer, Duration::from_millis(250));
        let next = p.pause();
        assert!(next <= PAUSE_MAX, "{next:?}");
        assert!(next.as_secs_f64() <= 2.0 * last.as_secs_f64().max(PAUSE_MIN.as_secs_f64()));
        last = next;
    }
    assert_eq!(last, PAUSE_MAX);
    // A small buffer shortens the pause for the same rate.
    let mut small = Pacing::new();
    for _ in 0..10 {
        small.drained(10_000, 40_000, Duration::from_millis(100));
    }
    assert!((small.pause().as_secs_f64() - 0.1).abs() < 1e-6);
}

#[test]
fn datagrams_the_kernel_drops_are_counted() {
    let listener = StatsdListener::bind(StatsdConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..StatsdConfig::default()
    })
    .expect("bind statsd listener");
    // The smallest receive buffer the kernel allows (it doubles the value
    // asked for and keeps a floor of a few KiB).
    set_receive_buffer(&listener.socket, 1).expect("setsockopt SO_RCVBUF");
    let state = listener.state();
    assert_eq!(dropped(&snap(&state), KERNEL_DROPS), 0.0);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client socket");
    let line = format!("filler:1|c|#pad:{}", "x".repeat(1000));
    // Nothing reads the socket, so past a few datagrams the kernel has no
    // room for them.
    for _ in 0..200 {
        client
            .send_to(line.as_bytes(), listener.local_addr().expect("address"))
            .expect("send");
    }
    let out = snap(&state);
    let drops = dropped(&out, KERNEL_DROPS);
    assert!(drops > 0.0 && drops < 200.0, "{drops} datagrams dropped");
    // Counted once: the next round reports the same total.
    assert_eq!(dropped(&snap(&state), KERNEL_DROPS), drops);
}

//! scripts/trace_picture.py, which draws the README's trace picture from Jaeger's query API: from
//! a real answer (tests/trace_picture/failed-batch.json, trimmed to one trace) it draws well-formed
//! SVG, the same bytes every time, showing the batch, its sendmmsg span and the failed message; it
//! refuses an answer without such a trace; and it escapes what the traced process named.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{json, Value};

const TRACE_ID: &str = "136e6106ea94d0238d227071c30c23b2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn fixture_path() -> PathBuf {
    repo().join("otel-sendmmsg/tests/trace_picture/failed-batch.json")
}

fn fixture() -> Value {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the fixture is JSON")
}

fn script(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("scripts/trace_picture.py"))
        .args(args)
        .output()
        .expect("running python3 scripts/trace_picture.py")
}

/// A path of this test process's own in the temporary directory.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("otel-sendmmsg-trace-picture-{}-{name}", std::process::id()))
}

/// Runs the script on `answer` (a derived Jaeger answer, saved under `name`).
fn draw(name: &str, answer: &Value) -> Output {
    let path = temp(name);
    std::fs::write(&path, serde_json::to_vec(answer).unwrap()).unwrap();
    let output = script(&["--json", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    output
}

fn succeeded(output: &Output) -> &[u8] {
    assert!(
        output.status.success(),
        "trace_picture.py failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    &output.stdout
}

/// The SVG's text as an XML parser reads it, one `<text>` element a line, after its x coordinate
/// and a tab: a panic unless the SVG is well-formed XML.
fn xml_text(svg: &[u8]) -> String {
    let parse = "import sys, xml.etree.ElementTree as E\n\
                 texts = E.parse(sys.stdin.buffer).getroot().iter('{http://www.w3.org/2000/svg}text')\n\
                 sys.stdout.write(''.join(t.get('x') + '\\t' + ''.join(t.itertext()) + '\\n' for t in texts))";
    let mut python = Command::new("python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    python.stdin.take().unwrap().write_all(svg).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the SVG is not well-formed XML: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(svg)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The fixture's trace, and in it the span named `operation`.
fn span<'a>(answer: &'a mut Value, operation: &str) -> &'a mut Value {
    answer["data"][0]["spans"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["operationName"] == operation)
        .unwrap_or_else(|| panic!("the fixture has a {operation} span"))
}

#[test]
fn draws_the_failed_batch() {
    let fixture = fixture_path();
    let svg = succeeded(&script(&["--json", fixture.to_str().unwrap()])).to_vec();
    let text = xml_text(&svg);
    for expected in [
        "publish-batch",
        "sendmmsg",
        TRACE_ID,
        // The header's total, the rows' durations and the axis, in microseconds.
        "104µs",
        "24µs",
        "25µs",
        // The failed message's label, the sendmmsg span's tags and the batch's status.
        "message 8: EMSGSIZE",
        "message 8 of 16 failed: EMSGSIZE",
        "127.0.0.1:8125",
        "sent 8 of 16",
    ] {
        assert!(text.contains(expected), "the picture lacks {expected:?}:\n{text}");
    }
    // Tree order: the batch's row, then its child's, indented.
    let row = |label: &str| {
        let (line, x) = text
            .lines()
            .enumerate()
            .find_map(|(n, l)| Some((n, l.strip_suffix(label)?.strip_suffix('\t')?)))
            .unwrap_or_else(|| panic!("no row {label}:\n{text}"));
        (line, x.parse::<f64>().unwrap())
    };
    let (batch, child) = (row("my-app publish-batch"), row("my-app sendmmsg"));
    assert!(batch.0 < child.0 && batch.1 < child.1, "{text}");
    let raw = String::from_utf8(svg.clone()).unwrap();
    assert!(raw.contains(r#"width="960""#), "a fixed width");
    for external in ["<script", "href", "url(", "<image", "@import"] {
        assert!(!raw.contains(external), "nothing external or active: found {external}");
    }

    // The same answer gives the same bytes, to stdout or to --out.
    let out = temp("out.svg");
    succeeded(&script(&["--json", fixture.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let again = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(again == svg, "a second run drew different bytes");
}

#[test]
fn refuses_an_answer_without_a_failed_sendmmsg_under_a_batch() {
    // The call succeeded: status OK, no error tags, no message with an error.type.
    let mut succeeded_call = fixture();
    let sendmmsg = span(&mut succeeded_call, "sendmmsg");
    let tags = sendmmsg["tags"].as_array_mut().unwrap();
    tags.retain(|t| {
        !["error", "error.type", "otel.status_description"].contains(&t["key"].as_str().unwrap())
    });
    for tag in tags.iter_mut().filter(|t| t["key"] == "otel.status_code") {
        tag["value"] = json!("OK");
    }
    for log in sendmmsg["logs"].as_array_mut().unwrap() {
        log["fields"].as_array_mut().unwrap().retain(|f| f["key"] != "error.type");
    }
    // The failed call, but not under a publish-batch span.
    let mut orphan = fixture();
    span(&mut orphan, "sendmmsg")["references"] = json!([]);
    let mut other_parent = fixture();
    span(&mut other_parent, "publish-batch")["operationName"] = json!("publish-other");

    for (name, answer) in [("ok", succeeded_call), ("orphan", orphan), ("other-parent", other_parent)] {
        let output = draw(&format!("{name}.json"), &answer);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: exit status ({stderr})");
        assert!(output.stdout.is_empty(), "{name}: no picture");
        for looked_for in ["publish-batch", "sendmmsg", "ERROR"] {
            assert!(stderr.contains(looked_for), "{name}: the message names {looked_for}: {stderr}");
        }
    }
}

#[test]
fn escapes_what_the_traced_process_named() {
    let mut answer = fixture();
    let hostile_name = r#"<script>&""#;
    let hostile_status = "</text><script>alert('x')</script>";
    let mut extra = span(&mut answer, "sendmmsg").clone();
    extra["spanID"] = json!("00000000000000aa");
    extra["operationName"] = json!(hostile_name);
    for tag in extra["tags"].as_array_mut().unwrap() {
        if tag["key"] == "otel.status_description" {
            tag["value"] = json!(hostile_status);
        }
    }
    answer["data"][0]["spans"].as_array_mut().unwrap().push(extra);
    answer["data"][0]["processes"]["p1"]["serviceName"] = json!("a<b>&\"'c");

    let output = draw("hostile.json", &answer);
    let svg = succeeded(&output);
    let text = xml_text(svg);
    for verbatim in [hostile_name, hostile_status, "a<b>&\"'c"] {
        assert!(text.lines().any(|l| l.contains(verbatim)), "{verbatim:?} is shown as it was:\n{text}");
    }
    let raw = String::from_utf8_lossy(svg);
    assert!(!raw.contains("<script") && !raw.contains("<b>"), "unescaped markup:\n{raw}");
    assert!(raw.contains("&lt;script&gt;&amp;&quot;"), "escaped:\n{raw}");
}

#[test]
fn draws_the_newest_failed_batch() {
    let mut newer = fixture()["data"][0].clone();
    newer["traceID"] = json!("0123456789abcdef0123456789abcdef");
    for span in newer["spans"].as_array_mut().unwrap() {
        span["startTime"] = json!(span["startTime"].as_u64().unwrap() + 1_000_000);
    }
    let older = fixture()["data"][0].clone();
    for (name, traces) in [("newer-last", json!([older, newer])), ("newer-first", json!([newer, older]))] {
        let text = xml_text(succeeded(&draw(&format!("{name}.json"), &json!({ "data": traces }))));
        assert!(text.contains("0123456789abcdef0123456789abcdef"), "{name}: the newer trace:\n{text}");
        assert!(!text.contains(TRACE_ID), "{name}: only the newer trace:\n{text}");
    }
}

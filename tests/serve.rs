//! `shiftwatch serve`: predictions match training, any model shape, every error, shutdown.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, labels_csv, read, read_response, repo};

/// Rebuilds the full probability vector from a classify answer with top_k = classes.
fn probabilities(answer: &Value, classes: usize) -> Vec<f64> {
    let mut p = vec![f64::NAN; classes];
    for item in answer["predictions"].as_array().expect("predictions") {
        let class = item["class"].as_u64().unwrap() as usize;
        p[class] = item["probability"].as_f64().unwrap();
    }
    p
}

fn png_bytes(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn bundled_images_reproduce_training_probabilities() {
    let fixture: Value = serde_json::from_slice(&read("tests/data/digits_fixture.json")).unwrap();
    let images = fixture["images"].as_array().unwrap().clone();
    assert!(
        images.len() > 1000,
        "fixture covers every bundled traffic image"
    );
    let server = Server::start(&[]);
    let checked = std::sync::atomic::AtomicUsize::new(0);
    let worst = std::sync::Mutex::new(0f64);
    std::thread::scope(|scope| {
        for chunk in images.chunks(images.len().div_ceil(4)) {
            let server = &server;
            let (checked, worst) = (&checked, &worst);
            scope.spawn(move || {
                for image in chunk {
                    let file = image["file"].as_str().unwrap();
                    let r = server.post(
                        "/v1/models/digits/classify?top_k=10",
                        Some("image/png"),
                        &read(file),
                    );
                    assert_eq!(
                        r.status,
                        200,
                        "{file}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    let got = probabilities(&r.json(), 10);
                    for (g, want) in got.iter().zip(image["probabilities"].as_array().unwrap()) {
                        let diff = (g - want.as_f64().unwrap()).abs();
                        assert!(
                            diff <= 1e-4,
                            "{file}: {got:?} vs {}",
                            image["probabilities"]
                        );
                        let mut w = worst.lock().unwrap();
                        *w = w.max(diff);
                    }
                    checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let checked = checked.into_inner();
    assert_eq!(checked, images.len());
    println!(
        "{checked} images match the training fixture; largest difference {:e}",
        worst.into_inner().unwrap()
    );
}

#[test]
fn answer_has_the_contract_fields_and_request_id() {
    let server = Server::start(&[]);
    let labels = labels_csv("data/traffic/normal/labels.csv");
    let (file, _) = &labels[0];
    let raw = crate::support::classify_request(
        "",
        "my-id-42",
        &read(format!("data/traffic/normal/{file}")),
    );
    let r = crate::support::request(server.addr, &raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("my-id-42"));
    let v = r.json();
    assert_eq!(v["request_id"], "my-id-42");
    assert_eq!(v["model"], "digits");
    assert_eq!(v["model_version"].as_str().unwrap().len(), 12);
    assert_eq!(
        v["predictions"].as_array().unwrap().len(),
        5,
        "default top_k is 5"
    );
    let top = &v["predictions"][0];
    assert_eq!(top["probability"], v["confidence"]);
    assert_eq!(top["label"], top["class"].to_string());
    let second = v["predictions"][1]["probability"].as_f64().unwrap();
    let margin = v["confidence"].as_f64().unwrap() - second;
    assert!((v["margin"].as_f64().unwrap() - margin).abs() < 1e-6);
    assert!(v["entropy"].as_f64().unwrap() >= 0.0);
    assert!(v["flags"].is_array());

    // Without the header a UUIDv7 is made.
    let r = server.post(
        "/v1/models/digits/classify?top_k=1",
        Some("image/png"),
        &read(format!("data/traffic/normal/{file}")),
    );
    let id = r.json()["request_id"].as_str().unwrap().to_string();
    let uuid = uuid::Uuid::parse_str(&id).expect("a uuid");
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 1);

    // Model metadata (v2) and health.
    let m = server.get("/v2/models/digits").json();
    assert_eq!(m["inputs"][0]["shape"], serde_json::json!([-1, 1, 8, 8]));
    assert_eq!(m["outputs"][0]["name"], "probabilities");
    assert_eq!(m["versions"][0], v["model_version"]);
    for path in [
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/digits/ready",
        "/v2",
    ] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    assert_eq!(server.get("/readyz").json()["execution_provider"], "cpu");
}

#[test]
fn a_model_of_another_shape_is_served_from_config_alone() {
    let expected: Value =
        serde_json::from_slice(&read("tests/data/rgb-cnn/expected.json")).unwrap();
    let config = r#"
[server]
listen = "127.0.0.1:0"
[model]
name = "rgb-cnn"
path = "tests/data/rgb-cnn/model.onnx"
labels = ["cat", "dog", "bird", "fish", "frog"]
[model.preprocess]
layout = "nhwc"
color = "rgb"
resize = "area"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[model.outputs]
kind = "logits"
[monitor]
# The bundled reference profile belongs to the digits model.
enabled = false
"#;
    let server = Server::start_with_config(config, &[]);
    let meta = server.get("/v2/models/rgb-cnn").json();
    assert_eq!(
        meta["inputs"][0]["shape"],
        serde_json::json!([-1, 64, 64, 3])
    );
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert_eq!(
        meta["outputs"].as_array().unwrap().len(),
        1,
        "no embedding output"
    );
    let images = expected["images"].as_array().unwrap();
    assert!(images.len() >= 3);
    for image in images {
        let file = image["file"].as_str().unwrap();
        let (content_type, tolerance) = if file.ends_with(".jpg") {
            ("image/jpeg", 2e-2)
        } else {
            ("image/png", 1e-5)
        };
        let r = server.post(
            "/v1/models/rgb-cnn/classify?top_k=5",
            Some(content_type),
            &read(file),
        );
        assert_eq!(
            r.status,
            200,
            "{file}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        let got = probabilities(&v, 5);
        let want: Vec<f64> = image["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= tolerance,
                "{file}: got {got:?}, want {want:?}"
            );
        }
        let sum: f64 = got.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "softmax applied to logits: {sum}");
        let best = v["predictions"][0]["class"].as_u64().unwrap() as usize;
        assert_eq!(
            v["predictions"][0]["label"],
            ["cat", "dog", "bird", "fish", "frog"][best]
        );
    }
}

#[test]
fn every_error_gets_its_status_and_code() {
    let server = Server::start(&[
        ("SHIFTWATCH__SERVER__MAX_BODY_BYTES", "200000"),
        ("SHIFTWATCH__LIMITS__MAX_IMAGE_PIXELS", "1000000"),
        ("SHIFTWATCH__LIMITS__MAX_IMAGE_WIDTH", "4096"),
    ]);
    let good = read("data/traffic/normal/normal-0000.png");
    let classify = "/v1/models/digits/classify";

    server
        .post("/v1/models/nope/classify", Some("image/png"), &good)
        .assert_error(404, "unknown_model");
    server
        .get("/v2/models/nope")
        .assert_error(404, "unknown_model");
    server.get("/no/such/route").assert_error(404, "not_found");
    server.get(classify).assert_error(405, "method_not_allowed");

    server
        .post(classify, Some("text/plain"), &good)
        .assert_error(415, "unsupported_media_type");
    server
        .post(classify, None, &good)
        .assert_error(415, "unsupported_media_type");
    // Bytes that are no known image format, declared as an octet stream.
    server
        .post(
            classify,
            Some("application/octet-stream"),
            b"plain text, not an image",
        )
        .assert_error(415, "unsupported_media_type");

    server
        .post(classify, Some("image/png"), b"\x89PNG\r\n\x1a\n garbage")
        .assert_error(400, "bad_image");
    for cut in [16, good.len() / 2, good.len() - 20] {
        server
            .post(classify, Some("image/png"), &good[..cut])
            .assert_error(400, "bad_image");
    }
    server
        .post(
            classify,
            Some("image/jpeg"),
            &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0],
        )
        .assert_error(400, "bad_image");
    server
        .post(classify, Some("image/png"), b"")
        .assert_error(400, "bad_image");

    server
        .post(classify, Some("image/png"), &vec![0u8; 300_000])
        .assert_error(413, "payload_too_large");

    // Over the width limit, and a decompression bomb: 3000x3000 zeros compress to a few KB,
    // rejected from the header before any pixel is decoded.
    let wide = png_bytes(&image::DynamicImage::ImageLuma8(image::GrayImage::new(
        5000, 1,
    )));
    server
        .post(classify, Some("image/png"), &wide)
        .assert_error(422, "image_too_large");
    let bomb = png_bytes(&image::DynamicImage::ImageLuma8(image::GrayImage::new(
        3000, 3000,
    )));
    assert!(bomb.len() < 200_000, "the bomb is small: {}", bomb.len());
    server
        .post(classify, Some("image/png"), &bomb)
        .assert_error(422, "image_too_large");

    server
        .post(&format!("{classify}?top_k=abc"), Some("image/png"), &good)
        .assert_error(400, "bad_query");
    server
        .post(&format!("{classify}?top_k=0"), Some("image/png"), &good)
        .assert_error(400, "bad_query");
    let mut raw = format!(
        "POST {classify} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\n\
         x-request-id: has space\r\nContent-Length: {}\r\n\r\n",
        good.len()
    )
    .into_bytes();
    raw.extend(&good);
    crate::support::request(server.addr, &raw).assert_error(400, "bad_request_id");

    // Other image formats decode too (BMP, GIF, TIFF, JPEG, WebP made from the same pixels).
    let img = image::open(repo().join("data/traffic/normal/normal-0000.png")).unwrap();
    for (format, ct) in [
        (image::ImageFormat::Bmp, "image/bmp"),
        (image::ImageFormat::Gif, "image/gif"),
        (image::ImageFormat::Tiff, "image/tiff"),
        (image::ImageFormat::Jpeg, "image/jpeg"),
        (image::ImageFormat::WebP, "image/webp"),
    ] {
        let mut bytes = Vec::new();
        let rgb = image::DynamicImage::ImageRgb8(img.to_rgb8());
        let encodable = if format == image::ImageFormat::WebP || format == image::ImageFormat::Gif {
            image::DynamicImage::ImageRgba8(img.to_rgba8())
        } else {
            rgb
        };
        encodable
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        let r = server.post(classify, Some(ct), &bytes);
        assert_eq!(r.status, 200, "{ct}: {}", String::from_utf8_lossy(&r.body));
    }

    // Still healthy after all of it.
    assert_eq!(server.post(classify, Some("image/png"), &good).status, 200);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Opens a classify request and sends all but the last `hold` bytes of the body.
fn open_partial(addr: std::net::SocketAddr, body: &[u8], hold: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST /v1/models/digits/classify HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() - hold]).unwrap();
    stream.flush().unwrap();
    stream
}

/// Polls `/readyz` until `n` requests are receiving their bodies.
fn wait_until_receiving(server: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = server.get("/readyz").json();
        if ready["receiving"].as_i64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {n} receiving: {ready}; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A PNG that takes a while to decode and resize (a debug build: about a second): a gradient
/// with noise, so that it compresses badly.
fn slow_png(side: u32) -> Vec<u8> {
    let image = image::GrayImage::from_fn(side, side, |x, y| {
        image::Luma([((x * 7 + y * 13 + (x * y) % 251) % 256) as u8])
    });
    png_bytes(&image::DynamicImage::ImageLuma8(image))
}

#[test]
fn a_full_admission_answers_503_and_slow_senders_hold_no_slot() {
    let server = Server::start(&[("SHIFTWATCH__INFERENCE__MAX_IN_FLIGHT", "2")]);
    let classify = "/v1/models/digits/classify";
    let body = read("data/traffic/normal/normal-0001.png");
    // Two clients still sending their bodies hold no admission slot: others are served.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| open_partial(server.addr, &body, 10))
        .collect();
    wait_until_receiving(&server, 2);
    for _ in 0..3 {
        assert_eq!(server.post(classify, Some("image/png"), &body).status, 200);
    }
    assert_eq!(server.get("/readyz").json()["in_flight"], 0);
    for stream in &mut held {
        stream.write_all(&body[body.len() - 10..]).unwrap();
        let r = read_response(stream);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    drop(server);

    // Admitted work fills the slots: one more is refused with 503 and Retry-After. Two large
    // images hold both slots while they decode; the check is retried in the (unlikely) case
    // that they finish between seeing them in flight and sending the third.
    let server = Server::start(&[("SHIFTWATCH__INFERENCE__MAX_IN_FLIGHT", "2")]);
    let big = slow_png(3000);
    let mut refused = false;
    for _attempt in 0..5 {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let (addr, big) = (server.addr, big.clone());
                std::thread::spawn(move || {
                    crate::support::request(
                        addr,
                        &[
                            format!(
                                "POST {classify} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                                 Content-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                                big.len()
                            )
                            .into_bytes(),
                            big,
                        ]
                        .concat(),
                    )
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/readyz").json()["in_flight"].as_u64() != Some(2)
            && Instant::now() < deadline
            && !slow.iter().all(|t| t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = server.post(classify, Some("image/png"), &body);
        for t in slow {
            assert_eq!(t.join().unwrap().status, 200);
        }
        if r.status == 503 {
            r.assert_error(503, "overloaded");
            assert_eq!(r.header("retry-after"), Some("1"));
            refused = true;
            break;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(refused, "never saw both slots taken in five tries");
    // Permits come back: serving goes on.
    assert_eq!(server.post(classify, Some("image/png"), &body).status, 200);
}

#[test]
fn sigterm_finishes_every_request_in_flight() {
    let in_flight = 8;
    let mut server = Server::start(&[(
        "SHIFTWATCH__INFERENCE__MAX_IN_FLIGHT",
        &in_flight.to_string(),
    )]);
    let labels = labels_csv("data/traffic/normal/labels.csv");
    let bodies: Vec<Vec<u8>> = labels[..in_flight]
        .iter()
        .map(|(f, _)| read(format!("data/traffic/normal/{f}")))
        .collect();
    let mut held: Vec<TcpStream> = bodies
        .iter()
        .map(|b| open_partial(server.addr, b, 7))
        .collect();
    // Their headers are in; their bodies are still coming (they hold no admission slot).
    wait_until_receiving(&server, in_flight as i64);

    server.terminate();
    // Readiness and new connections go away while the held requests are still open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(server.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener stayed open after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (stream, body) in held.iter_mut().zip(&bodies) {
        stream.write_all(&body[body.len() - 7..]).unwrap();
        let r = read_response(stream);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["predictions"].is_array());
    }
    let status = server.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        server.stderr()
    );
    assert!(server.stderr().contains("shut down"));
}

/// The model input the training used for a bundled PNG: 4x4 blocks averaged, pixel / 240.
fn digit_tensor(file: &str) -> Vec<f32> {
    let img = image::load_from_memory(&read(file)).unwrap().to_luma8();
    let mut out = Vec::with_capacity(64);
    for y in 0..8 {
        for x in 0..8 {
            let mut sum = 0u32;
            for dy in 0..4 {
                for dx in 0..4 {
                    sum += u32::from(img.get_pixel(x * 4 + dx, y * 4 + dy)[0]);
                }
            }
            out.push(sum as f32 / 16.0 / 240.0);
        }
    }
    out
}

/// The head of a v2 infer request with binary data: `header_length` as the
/// Inference-Header-Content-Length value, and a body of `body_len` bytes.
fn infer_head(header_length: &str, body_len: usize) -> String {
    format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {header_length}\r\n\
         Content-Length: {body_len}\r\n\r\n"
    )
}

/// A v2 infer request of `body` with `header_length` as its Inference-Header-Content-Length.
fn infer_body(server: &Server, header_length: &str, body: &[u8]) -> crate::support::Response {
    let mut raw = infer_head(header_length, body.len()).into_bytes();
    raw.extend_from_slice(body);
    crate::support::request(server.addr, &raw)
}

fn infer_raw(server: &Server, json: &[u8], binary: &[u8]) -> crate::support::Response {
    infer_body(server, &json.len().to_string(), &[json, binary].concat())
}

/// The first `n` images of the digits fixture (file and training probabilities) and their
/// tensors, one after another.
fn fixture_images(n: usize) -> (Vec<Value>, Vec<f32>) {
    let fixture: Value = serde_json::from_slice(&read("tests/data/digits_fixture.json")).unwrap();
    let images: Vec<Value> = fixture["images"].as_array().unwrap()[..n].to_vec();
    let tensor = images
        .iter()
        .flat_map(|i| digit_tensor(i["file"].as_str().unwrap()))
        .collect();
    (images, tensor)
}

#[test]
fn v2_infer_takes_json_and_binary_tensors() {
    let server = Server::start(&[("SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS", "0.1")]);
    let (images, tensor) = fixture_images(3);
    let want: Vec<f64> = images
        .iter()
        .flat_map(|i| {
            i["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let close = |got: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{got:?} vs {want:?}");
        }
    };

    // JSON tensors, nested rows.
    let rows: Vec<Vec<f32>> = tensor.chunks(64).map(<[f32]>::to_vec).collect();
    let body = serde_json::json!({
        "id": "batch-a",
        "inputs": [{"name": "image", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": rows}]
    });
    let r = server.post(
        "/v2/models/digits/infer",
        Some("application/json"),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["model_name"], "digits");
    assert_eq!(v["id"], "batch-a");
    let probs = &v["outputs"][0];
    assert_eq!(probs["name"], "probabilities");
    assert_eq!(probs["shape"], serde_json::json!([3, 10]));
    let got: Vec<f64> = probs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    close(&got);
    assert_eq!(
        v["outputs"][1]["shape"],
        serde_json::json!([3, 32]),
        "the embedding too"
    );

    // Binary in, binary out for the probabilities only.
    let binary: Vec<u8> = tensor.iter().flat_map(|f| f.to_le_bytes()).collect();
    let header = serde_json::json!({
        "inputs": [{"name": "image", "shape": [3, 1, 8, 8], "datatype": "FP32",
                    "parameters": {"binary_data_size": binary.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]
    })
    .to_string();
    let r = infer_raw(&server, header.as_bytes(), &binary);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json_len: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 120);
    let got: Vec<f64> = r.body[json_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    close(&got);

    // Errors: dtype, shape, length, input name, malformed JSON.
    let bad = |body: Value| {
        server.post(
            "/v2/models/digits/infer",
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    };
    bad(serde_json::json!({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "INT32", "data": vec![0; 64]}]}))
        .assert_error(422, "wrong_dtype");
    bad(serde_json::json!({"inputs": [{"name": "image", "shape": [1, 1, 9, 9], "datatype": "FP32", "data": vec![0.0; 81]}]}))
        .assert_error(422, "wrong_shape");
    bad(serde_json::json!({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": vec![0.0; 63]}]}))
        .assert_error(422, "wrong_shape");
    bad(serde_json::json!({"inputs": [{"name": "pixels", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": vec![0.0; 64]}]}))
        .assert_error(422, "wrong_input");
    server
        .post(
            "/v2/models/digits/infer",
            Some("application/json"),
            b"{\"inputs\": [",
        )
        .assert_error(400, "bad_json");
    server
        .post("/v2/models/nope/infer", Some("application/json"), b"{}")
        .assert_error(404, "unknown_model");

    // Monitored like classify: six predictions reach the window (3 + 3).
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(
        text.contains(
            "shiftwatch_requests_total{code=\"200\",endpoint=\"infer\",model=\"digits\"} 2"
        ),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/v1/monitor").json()["window"]["predictions"] != 6 {
        assert!(
            Instant::now() < deadline,
            "the infer predictions never reached the window"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A v2 binary request whose JSON part and floats arrive cut into pieces (separate TCP writes,
/// so separate body frames): the JSON part is put back together and every float lands whole,
/// wherever the cuts fall; the answer equals the one sent in one piece. A non-finite float
/// sent as binary data is refused as it would be in JSON.
#[test]
fn v2_binary_data_arriving_in_pieces_is_read_as_sent() {
    use std::io::Write;
    let server = Server::start(&[]);
    let (_, tensor) = fixture_images(2);
    let binary: Vec<u8> = tensor.iter().flat_map(|f| f.to_le_bytes()).collect();
    let header = serde_json::json!({
        "inputs": [{"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32",
                    "parameters": {"binary_data_size": binary.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]
    })
    .to_string();
    let whole = infer_raw(&server, header.as_bytes(), &binary);
    assert_eq!(
        whole.status,
        200,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    let want = whole.json()["outputs"][0]["data"].clone();
    assert_eq!(want.as_array().unwrap().len(), 20);

    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&binary);
    let json_len = header.len();
    // Cuts inside the JSON part, at its end, and at every offset within floats far from zero
    // (a lost low byte of a zero pixel would change nothing the answer shows).
    let bright: Vec<usize> = tensor
        .iter()
        .enumerate()
        .filter(|(_, v)| **v >= 0.25)
        .map(|(i, _)| json_len + 4 * i)
        .take(3)
        .collect();
    assert_eq!(bright.len(), 3);
    let cuts = [
        7,
        json_len - 1,
        json_len,
        json_len + 1,
        bright[0] + 1,
        bright[1] + 2,
        bright[2] + 3,
        body.len() - 3,
    ];
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(infer_head(&json_len.to_string(), body.len()).as_bytes())
        .unwrap();
    let mut from = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        stream.write_all(&body[from..cut]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        from = cut;
    }
    let pieces = crate::support::read_response(&mut stream);
    assert_eq!(
        pieces.status,
        200,
        "{}",
        String::from_utf8_lossy(&pieces.body)
    );
    assert_eq!(pieces.json()["outputs"][0]["data"], want);

    // NaN as binary data: refused, as in JSON.
    let mut nan = binary.clone();
    nan[4 * 70..4 * 71].copy_from_slice(&f32::NAN.to_le_bytes());
    infer_raw(&server, header.as_bytes(), &nan).assert_error(400, "bad_tensor");
    // An Inference-Header-Content-Length past the body, or not a number.
    infer_body(&server, &(body.len() + 1).to_string(), &body).assert_error(400, "bad_header");
    infer_body(&server, "twelve", &body).assert_error(400, "bad_header");
}

/// `inference.sessions = "auto"` (the default): the bundled digits model (microseconds a run)
/// gets one session batching up to 32; the compute-heavy comparison model
/// (`training/make_heavy_model.py`, milliseconds a run) one session per core, each answering,
/// and one image a run; a `max_batch` given in the config is kept.
#[test]
fn auto_sessions_follow_the_model_cost() {
    let digits = Server::start(&[]);
    let log = digits.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("inference \"auto\""))
        .unwrap_or_else(|| panic!("no auto line in:\n{log}"));
    assert!(
        line.contains("a light model")
            && line.contains("sessions=1")
            && line.contains("max_batch=32"),
        "{line}"
    );
    drop(digits);

    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(crate::support::python())
        .arg(repo().join("training/make_heavy_model.py"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = std::fs::read_to_string(dir.path().join("heavy.toml")).unwrap();
    let config = format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}");
    let heavy = Server::start_with_config(&config, &[]);
    // One session per core, at most 64.
    let cores = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(64);
    let log = heavy.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("inference \"auto\""))
        .unwrap_or_else(|| panic!("no auto line in:\n{log}"));
    assert!(line.contains(&format!("sessions={cores}")), "{line}");
    // One image a run: a session's thread would run a batch's images one after another.
    let field = |name: &str| {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    assert_eq!(field("max_batch"), "1", "{line}");
    if cores > 1 {
        assert!(line.contains("a compute-heavy model"), "{line}");
    }
    let run_us: u64 = field("one_image_run_us")
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    assert!(run_us >= 500, "{line}");
    let photo = read(dir.path().join("photo.png"));
    let answer = heavy.post("/v1/models/heavy/classify", Some("image/png"), &photo);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    // Eight clients at once, each twice: with batches of up to 32 the queue would form some
    // larger than one; every run holds one image.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..2 {
                    let r = heavy.post("/v1/models/heavy/classify", Some("image/png"), &photo);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                }
            });
        }
    });
    let runs = heavy.metric("shiftwatch_inference_batch_size_count{model=\"heavy\"}");
    assert_eq!(runs, 17.0);
    assert_eq!(
        heavy.metric("shiftwatch_inference_batch_size_bucket{model=\"heavy\",le=\"1\"}"),
        runs
    );
    drop(heavy);

    // `check-config` says what "auto" chose and why.
    let config_path = dir.path().join("check.toml");
    let check_config = |text: &str| {
        std::fs::write(&config_path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shiftwatch"))
            .arg("check-config")
            .arg("--config")
            .arg(&config_path)
            .env("SHIFTWATCH__LOG__DIR", dir.path().join("log"))
            .env("SHIFTWATCH__CANDIDATES__DIR", dir.path().join("candidates"))
            .current_dir(repo())
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed
    };
    let printed = check_config(&config);
    assert!(
        printed.contains(&format!(
            "sessions         {cores} (\"auto\": one image's run "
        )),
        "{printed}"
    );
    assert!(
        printed.contains("max batch        1 (\"auto\": one image's run "),
        "{printed}"
    );
    // A number is taken as given, and `check-config` says where it came from.
    let printed = check_config(&format!("{config}[inference]\nmax_batch = 4\n"));
    assert!(
        printed.contains("max batch        4 (set in [inference])"),
        "{printed}"
    );
}

//! The in-test Kubernetes API server ([`sluice_e2e::fake_apiserver`]) as a program, for
//! end-to-end tests that run `sluice control --kube` in a pod's network namespace.
//!
//! `fake-apiserver LISTEN_ADDR [OBJECTS.json]`: serves on LISTEN_ADDR, starting with the
//! objects of OBJECTS.json (a JSON array); the tests change them with `POST /fake/apply`,
//! `/fake/delete`, `/fake/cut` and `/fake/compact`.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(listen) = args.next() else {
        eprintln!("usage: fake-apiserver LISTEN_ADDR [OBJECTS.json]");
        std::process::exit(2);
    };
    let listener = std::net::TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("fake-apiserver: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    let server = sluice_e2e::fake_apiserver::FakeApiServer::start(listener);
    if let Some(file) = args.next() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            eprintln!("fake-apiserver: cannot read {file}: {e}");
            std::process::exit(1);
        });
        let objects: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| {
            eprintln!("fake-apiserver: {file} is not a JSON array of objects: {e}");
            std::process::exit(1);
        });
        for object in objects {
            server.apply(object);
        }
    }
    println!("fake-apiserver listening on {}", server.addr());
    loop {
        std::thread::park();
    }
}

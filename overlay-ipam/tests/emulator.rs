#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Replays representative exchanges of the phpIPAM transcript
//! (`api-transcript.md`) against the emulator and compares status codes,
//! messages and body shapes (keys and JSON types).

use std::collections::BTreeMap;
use std::time::Duration;

use overlay_ipam::emulator::{Emulator, EmulatorConfig, Fault};
use serde_json::{Value, json};

const USER: &str = "apiuser";
const PASS: &str = "ApiUser-Test-1";

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    raw: String,
    body: Value,
}

impl Reply {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn new() -> (Emulator, Api) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        let api = Api {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: emu.url(),
        };
        (emu, api)
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut r = self.http.request(
            method.parse().unwrap(),
            format!("{}/api/{}", self.base, path.trim_start_matches('/')),
        );
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.unwrap();
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            raw,
            body,
        }
    }

    async fn login(&self) -> String {
        let v: Value = self.basic_login(USER, PASS).await.json().await.unwrap();
        v["data"]["token"].as_str().unwrap().to_string()
    }

    /// `method` on `path` with `token` and a form (or no) body.
    async fn send(&self, method: &str, token: &str, path: &str, body: Option<&str>) -> Reply {
        self.req(method, path, &[("token", token)], body).await
    }

    /// `POST overlay/user/`: a login with basic authentication.
    async fn basic_login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/overlay/user/", self.base))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> Reply {
        self.req("GET", path, &[("token", token)], None).await
    }

    async fn post_json(&self, token: &str, path: &str, body: &str) -> Reply {
        self.req(
            "POST",
            path,
            &[("token", token), ("content-type", "application/json")],
            Some(body),
        )
        .await
    }
}

/// The shape of a JSON value: object keys with the shapes of their values,
/// scalars reduced to their type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// Compares with a transcript body: same code/success/message, and the
/// same shape everywhere (`time` may be 0 or a float on the real server).
fn assert_like(got: &Reply, status: u16, transcript: &str) {
    let want: Value = serde_json::from_str(transcript).unwrap();
    assert_eq!(got.status, status, "status; body {}", got.raw);
    assert_eq!(got.body["code"], want["code"], "code; body {}", got.raw);
    assert_eq!(got.body["success"], want["success"]);
    assert_eq!(got.body["message"], want["message"], "body {}", got.raw);
    let mut g = shape(&got.body);
    let mut w = shape(&want);
    g.as_object_mut().unwrap().remove("time");
    w.as_object_mut().unwrap().remove("time");
    assert!(got.body["time"].is_number());
    assert_eq!(g, w, "shape differs; got {}", got.raw);
    assert_eq!(
        got.headers["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(got.headers.contains_key("set-cookie"));
}

/// Compares with a transcript reply that carries only a message:
/// `{"code":status,"success":false,"message":message,"time":0}`.
fn assert_error(got: &Reply, status: u16, message: &str) {
    let want = json!({"code": status, "success": false, "message": message, "time": 0});
    assert_like(got, status, &want.to_string());
}

/// [`assert_error`] for a successful reply (`"success":true`).
fn assert_message(got: &Reply, status: u16, message: &str) {
    let want = json!({"code": status, "success": true, "message": message, "time": 0});
    assert_like(got, status, &want.to_string());
}

const UNAUTHORIZED: &str = r#"{"code":401,"success":false,"message":"Unauthorized","time":0.005}"#;

#[tokio::test]
async fn authentication_and_token_rules() {
    let (emu, api) = Api::new().await;
    let token = login_rules(&emu, &api).await;
    token_header_rules(&api, &token).await;
    let fresh = expiry_rules(&emu, &api, &token).await;
    // 1.18 / 1.19a / 1.19 app errors
    let r = api.req("POST", "nosuchapp/user/", &[], None).await;
    assert_error(&r, 400, "Invalid application id");
    let r = api.req("POST", "overlay_ssl/user/", &[], None).await;
    assert_error(&r, 503, "SSL connection is required for API");
    let r = api.req("POST", "overlay_user/user/", &[], None).await;
    assert_error(&r, 503, "Invalid app security");
    // The token is per user, not per app.
    assert_eq!(api.get(&fresh, "overlay_ro/subnets/1/").await.status, 200);
    // 7.9 / 7.10 logout kills the token for everyone.
    let r = api.send("DELETE", &fresh, "overlay/user/", None).await;
    assert_like(
        &r,
        200,
        r#"{"code":200,"success":true,"data":["Token removed"],"time":0.003}"#,
    );
    assert_like(
        &api.get(&fresh, "overlay/subnets/1/").await,
        401,
        UNAUTHORIZED,
    );
}

/// 1.1 - 1.5: refused logins, then a login; returns its token.
async fn login_rules(emu: &Emulator, api: &Api) -> String {
    // 1.1 no credentials
    let r = api.req("POST", "overlay/user/", &[], None).await;
    assert_error(&r, 400, "Please provide username and password");
    // 1.2 / 1.3 wrong password, unknown user
    for (u, p) in [(USER, "wrong-password"), ("nosuchuser", "whatever")] {
        let r = api.basic_login(u, p).await;
        assert_eq!(r.status(), 500);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["message"], "Invalid username or password");
        assert_eq!(v["success"], false);
    }
    emu.clear_login_block();
    // 1.4 / 1.5 login twice: the same token, 24 chars of [A-Za-z0-9_-]
    let v: Value = api.basic_login(USER, PASS).await.json().await.unwrap();
    assert_eq!(
        shape(&v),
        shape(&serde_json::from_str::<Value>(r#"{"code":200,"success":true,"data":{"token":"UKiQm30gUsba43eqQf8l6fbE","expires":"2026-11-22 15:51:39"},"time":0.015}"#).unwrap())
    );
    let token = v["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 24);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    let expires = v["data"]["expires"].as_str().unwrap();
    assert_eq!(expires.len(), "2026-11-22 15:51:39".len());
    assert_eq!(
        api.login().await,
        token,
        "re-auth while valid returns the same token"
    );
    token
}

/// 1.6 - 1.12: which token headers count, and the 401 of the others.
async fn token_header_rules(api: &Api, token: &str) {
    // 1.6 / 1.7 both token headers work on /user/
    for h in ["token", "phpipam-token"] {
        let r = api.req("GET", "overlay/user/", &[(h, token)], None).await;
        assert_like(
            &r,
            200,
            r#"{"code":200,"success":true,"data":{"expires":"2026-11-22 15:51:39"},"time":0.001}"#,
        );
    }
    // 1.8 / 1.9
    let r = api.req("GET", "overlay/user/", &[], None).await;
    assert_error(&r, 403, "Please provide token");
    let r = api.get("AAAAAAAAAAAAAAAAAAAAAAAA", "overlay/user/").await;
    assert_error(&r, 403, "Invalid token");
    // 1.10 / 1.11 / 1.12: 401 + the buggy Location
    let r = api.req("GET", "overlay/subnets/1/", &[], None).await;
    assert_like(&r, 401, UNAUTHORIZED);
    assert_eq!(r.headers["location"], "/api//user/");
    let r = api
        .get("AAAAAAAAAAAAAAAAAAAAAAAA", "overlay/subnets/1/")
        .await;
    assert_like(&r, 401, UNAUTHORIZED);
    let bearer = format!("Bearer {token}");
    let r = api
        .req(
            "GET",
            "overlay/subnets/1/",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_like(&r, 401, UNAUTHORIZED);
}

/// 1.13 - 1.17: `token` expires, a new login rotates it and PATCH
/// refreshes the new one; returns the new token.
async fn expiry_rules(emu: &Emulator, api: &Api, token: &str) -> String {
    emu.expire_tokens();
    assert_like(
        &api.get(token, "overlay/subnets/1/").await,
        401,
        UNAUTHORIZED,
    );
    let r = api.get(token, "overlay/user/").await;
    assert_error(&r, 403, "Token expired");
    let fresh = api.login().await;
    assert_ne!(fresh, token, "re-auth after expiry rotates the token");
    assert_like(
        &api.get(token, "overlay/subnets/1/").await,
        401,
        UNAUTHORIZED,
    );
    assert_eq!(api.get(&fresh, "overlay/subnets/1/").await.status, 200);
    // 1.17 PATCH refreshes
    let r = api.send("PATCH", &fresh, "overlay/user/", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["data"]["expires"].is_string());
    fresh
}

const SUBNET_1: &str = r#"{"code":200,"success":true,"data":{"id":1,"subnet":"192.0.2.0","mask":"24","sectionId":1,"description":"TEST-NET-1 192.0.2.0\/24 (gateway .1)","linked_subnet":null,"firewallAddressObject":null,"vrfId":0,"masterSubnetId":0,"allowRequests":0,"vlanId":null,"showName":0,"device":0,"permissions":"{\"2\":\"3\",\"3\":\"1\"}","pingSubnet":0,"discoverSubnet":0,"resolveDNS":0,"DNSrecursive":0,"DNSrecords":0,"nameserverId":0,"scanAgent":null,"customer_id":null,"isFolder":0,"isFull":0,"isPool":0,"tag":2,"threshold":0,"location":null,"editDate":null,"lastScan":null,"lastDiscovery":null,"gatewayId":1,"gateway":{"ip_addr":"192.0.2.1","id":1},"calculation":{"Type":"IPv4","IP address":"\/","Network":"192.0.2.0","Broadcast":"192.0.2.255","Subnet bitmask":"24","Subnet netmask":"255.255.255.0","Subnet wildcard":"0.0.0.255","Min host IP":"192.0.2.1","Max host IP":"192.0.2.254","Number of hosts":"254","Subnet Class":"TEST-NET-1"}},"time":0.007}"#;

const SUBNET_2: &str = r#"{"code":200,"success":true,"data":{"id":2,"subnet":"198.51.100.0","mask":"29","sectionId":1,"description":"TEST-NET-2 198.51.100.0\/29 (exhaustion)","linked_subnet":null,"firewallAddressObject":null,"vrfId":0,"masterSubnetId":0,"allowRequests":0,"vlanId":null,"showName":0,"device":0,"permissions":"{\"2\":\"3\",\"3\":\"1\"}","pingSubnet":0,"discoverSubnet":0,"resolveDNS":0,"DNSrecursive":0,"DNSrecords":0,"nameserverId":0,"scanAgent":null,"customer_id":null,"isFolder":0,"isFull":0,"isPool":0,"tag":2,"threshold":0,"location":null,"editDate":null,"lastScan":null,"lastDiscovery":null,"calculation":{"Type":"IPv4","IP address":"\/","Network":"198.51.100.0","Broadcast":"198.51.100.7","Subnet bitmask":"29","Subnet netmask":"255.255.255.248","Subnet wildcard":"0.0.0.7","Min host IP":"198.51.100.1","Max host IP":"198.51.100.6","Number of hosts":"6","Subnet Class":"TEST-NET-2"}},"time":0.003}"#;

const ADDRESS_3: &str = r#"{"code":200,"success":true,"data":{"id":3,"subnetId":1,"ip":"192.0.2.3","is_gateway":0,"description":"json-body","hostname":"vm-json.example.invalid","mac":null,"owner":"overlay","tag":2,"deviceId":null,"location":null,"port":null,"note":null,"lastSeen":"1970-01-01 00:00:01","excludePing":0,"PTRignore":0,"PTR":0,"firewallAddressObject":null,"editDate":null,"customer_id":null},"time":0.002}"#;

const CREATED: &str = r#"{"code":201,"success":true,"message":"Address created","id":"2","data":"192.0.2.2","time":0.014}"#;

#[tokio::test]
async fn subnets_and_first_free() {
    let (emu, api) = Api::new().await;
    let t = api.login().await;
    subnet_reads(&api, &t).await;
    first_free_with_bodies(&api, &t).await;
    first_free_defaults_and_errors(&api, &t).await;
    first_free_exhaustion(&emu, &api, &t).await;
}

/// 2.1 - 2.10: subnets, their first free address and their addresses.
async fn subnet_reads(api: &Api, t: &str) {
    // 2.1 with gateway: same shape and the same values as recorded.
    let r = api.get(t, "overlay/subnets/1/").await;
    assert_like(&r, 200, SUBNET_1);
    let want: Value = serde_json::from_str(SUBNET_1).unwrap();
    assert_eq!(r.body["data"], want["data"]);
    // 2.2 without gateway: gatewayId/gateway absent.
    let r = api.get(t, "overlay/subnets/2").await;
    assert_like(&r, 200, SUBNET_2);
    // 2.3 stringified results
    let r = api
        .req(
            "GET",
            "overlay/subnets/1/",
            &[("token", t), ("api-stringify-results", "1")],
            None,
        )
        .await;
    assert_eq!(r.body["data"]["id"], "1");
    assert_eq!(r.body["data"]["gateway"]["id"], "1");
    // 2.4 / 2.5 inverted codes
    let r = api.get(t, "overlay/subnets/999/").await;
    assert_error(&r, 400, "Invalid subnet Id (999)");
    let r = api.get(t, "overlay/subnets/abc/").await;
    assert_error(&r, 404, "Invalid Id");
    // 2.6 / 2.7 / 3.1 peeks
    for p in [
        "overlay/subnets/1/first_free/",
        "overlay/addresses/first_free/1/",
        "overlay/subnets/1/first_free",
    ] {
        let r = api.get(t, p).await;
        assert_like(
            &r,
            200,
            r#"{"code":200,"success":true,"data":"192.0.2.2","time":0.003}"#,
        );
    }
    let r = api.get(t, "overlay/subnets/999/first_free/").await;
    assert_error(&r, 404, "Invalid subnet Id (999)");
    // 2.9 empty list is a 404; 2.10 unknown subnet
    let r = api.get(t, "overlay/subnets/2/addresses/").await;
    assert_error(&r, 404, "No addresses found");
    let r = api.get(t, "overlay/subnets/999/addresses/").await;
    assert_error(&r, 404, "Invalid subnet Id (999)");
}

/// 3.2 - 3.7: allocations with form and JSON bodies.
async fn first_free_with_bodies(api: &Api, t: &str) {
    // 3.2 form body: 201, id as a string, Location.
    let r = api
        .send(
            "POST",
            t,
            "overlay/addresses/first_free/1/",
            Some("hostname=vm-form.example.invalid&description=form-body&owner=overlay"),
        )
        .await;
    assert_like(&r, 201, CREATED);
    assert_eq!(r.body["data"], "192.0.2.2");
    assert_eq!(
        r.headers["location"],
        format!("/api/overlay/addresses/{}/", r.body["id"].as_str().unwrap())
    );
    // 3.4 / 3.5 JSON body, stored fields
    let r = api
        .post_json(
            t,
            "overlay/addresses/first_free/1/",
            r#"{"hostname":"vm-json.example.invalid","description":"json-body","owner":"overlay"}"#,
        )
        .await;
    assert_like(&r, 201, CREATED);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = api.get(t, &format!("overlay/addresses/{id}/")).await;
    assert_like(&r, 200, ADDRESS_3);
    assert_eq!(r.body["data"]["ip"], "192.0.2.3");
    assert_eq!(r.body["data"]["id"], json!(id.parse::<u64>().unwrap()));
    // 3.6 JSON without a JSON content type is a form key
    let r = api
        .send(
            "POST",
            t,
            "overlay/addresses/first_free/1/",
            Some(r#"{"hostname":"vm-noct.example.invalid"}"#),
        )
        .await;
    assert_error(
        &r,
        400,
        "Invalid request key {\"hostname\":\"vm-noct_example_invalid\"}",
    );
    // 3.7 subnetId in the body
    let r = api
        .post_json(
            t,
            "overlay/addresses/first_free/",
            r#"{"subnetId":1,"hostname":"vm-sid.example.invalid"}"#,
        )
        .await;
    assert_like(&r, 201, CREATED);
    assert_eq!(r.body["data"], "192.0.2.4");
}

/// 3.9 - 3.14: an allocation without a body, and refused ones.
async fn first_free_defaults_and_errors(api: &Api, t: &str) {
    // 3.9 / 3.10 no body: description defaults
    let r = api
        .send("POST", t, "overlay/addresses/first_free/1", None)
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = api.get(t, &format!("overlay/addresses/{id}/")).await;
    assert_eq!(r.body["data"]["description"], "API created");
    assert_eq!(r.body["data"]["hostname"], Value::Null);
    // 3.11 / 3.13 / 3.14
    let r = api
        .post_json(
            t,
            "overlay/addresses/first_free/1/",
            r#"{"hostname":"vm-x.example.invalid","foo":"bar"}"#,
        )
        .await;
    assert_error(&r, 400, "Invalid request key foo");
    let r = api
        .post_json(
            t,
            "overlay/addresses/first_free/999/",
            r#"{"hostname":"x"}"#,
        )
        .await;
    assert_error(&r, 400, "Invalid subnet identifier");
    let r = api
        .send("POST", t, "overlay/subnets/1/first_free/", None)
        .await;
    assert_error(&r, 400, "Invalid CIDR format!");
}

/// 3b: the /29 runs out, then 3.16 / 3.17, then the manual isFull flag.
async fn first_free_exhaustion(emu: &Emulator, api: &Api, t: &str) {
    // 3b exhaustion of the /29, then 3.16/3.17, then the manual isFull flag.
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let r = api
                .send("POST", t, "overlay/addresses/first_free/2/", None)
                .await;
            assert_eq!(r.status, 201);
            v.push(r.body["data"].as_str().unwrap().to_string());
        }
        v
    };
    assert_eq!(
        got,
        (1..=6)
            .map(|i| format!("198.51.100.{i}"))
            .collect::<Vec<_>>()
    );
    let full = r#"{"code":404,"success":false,"message":"No free addresses found","time":0.002}"#;
    assert_like(
        &api.post_json(
            t,
            "overlay/addresses/first_free/2/",
            r#"{"hostname":"overflow.example.invalid"}"#,
        )
        .await,
        404,
        full,
    );
    assert_like(
        &api.get(t, "overlay/addresses/first_free/2/").await,
        404,
        full,
    );
    assert_like(
        &api.get(t, "overlay/subnets/2/first_free/").await,
        404,
        full,
    );
    assert_eq!(
        api.get(t, "overlay/subnets/2/").await.body["data"]["isFull"],
        0
    );
    emu.set_subnet_full(2, true);
    let r = api
        .send("POST", t, "overlay/addresses/first_free/2/", None)
        .await;
    assert_error(&r, 404, "No free addresses found (subnet is full)");
}

#[tokio::test]
async fn search_create_patch_delete() {
    let (_emu, api) = Api::new().await;
    let t = api.login().await;
    searches(&api, &t).await;
    let fixed = creates(&api, &t).await;
    patches_and_deletes(&api, &t, &fixed).await;
    // 5.19 lowest hole reused
    let r = api.get(&t, "overlay/addresses/first_free/1/").await;
    assert_eq!(r.body["data"], "192.0.2.2");
    // 6.x tags
    let r = api.get(&t, "overlay/addresses/tags/").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 4);
    let r = api.get(&t, "overlay/addresses/tags/99/").await;
    assert_error(&r, 404, "Address tag does not exist");
}

/// 4.1 - 4.9: searches by ip, hostname, ip and subnet, and id.
async fn searches(api: &Api, t: &str) {
    // 4.1 - 4.3 search by ip
    let r = api.get(t, "overlay/addresses/search/192.0.2.1/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["is_gateway"], 1);
    assert_eq!(r.body["data"][0]["hostname"], "gw.example.invalid");
    let r = api.get(t, "overlay/addresses/search/192.0.2.200/").await;
    assert_error(&r, 404, "Address not found");
    let r = api.get(t, "overlay/addresses/search/not-an-ip/").await;
    assert_error(&r, 400, "Invalid address");
    // Set up the transcript's address 3 and a second holder of its hostname.
    api.post_json(
        t,
        "overlay/addresses/first_free/1/",
        r#"{"hostname":"vm-form.example.invalid"}"#,
    )
    .await;
    api.post_json(
        t,
        "overlay/addresses/first_free/1/",
        r#"{"hostname":"vm-json.example.invalid","description":"json-body","owner":"overlay"}"#,
    )
    .await;
    // 4.4 / 4.6 hostname search, case-insensitive
    for h in ["vm-json.example.invalid", "VM-JSON.EXAMPLE.INVALID"] {
        let r = api
            .get(t, &format!("overlay/addresses/search_hostname/{h}/"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            shape(&r.body["data"][0]),
            shape(&serde_json::from_str::<Value>(ADDRESS_3).unwrap()["data"])
        );
        assert_eq!(r.body["data"][0]["ip"], "192.0.2.3");
    }
    let r = api
        .get(t, "overlay/addresses/search_hostname/nope.example.invalid/")
        .await;
    assert_error(&r, 404, "Hostname not found");
    // 4.7 / 4.8 ip + subnet: raw DB shape
    let r = api.get(t, "overlay/addresses/192.0.2.1/1/").await;
    assert_like(
        &r,
        200,
        r#"{"code":200,"success":true,"data":{"id":1,"subnetId":1,"ip_addr":"3221225985","is_gateway":1,"description":"Gateway","hostname":"gw.example.invalid","mac":null,"owner":null,"state":2,"switch":null,"location":null,"port":null,"note":null,"lastSeen":"1970-01-01 00:00:01","excludePing":0,"PTRignore":0,"PTR":0,"firewallAddressObject":null,"editDate":null,"customer_id":null,"ip":"192.0.2.1"},"time":0.002}"#,
    );
    assert_eq!(r.body["data"]["ip_addr"], "3221225985");
    let r = api.get(t, "overlay/addresses/192.0.2.200/1/").await;
    assert_error(&r, 404, "No addresses found");
    // 4.9
    let r = api.get(t, "overlay/addresses/9999/").await;
    assert_error(&r, 404, "Invalid Id");
}

/// 5.1 - 5.8b: addresses created at a given ip; returns the id of the
/// first.
async fn creates(api: &Api, t: &str) -> String {
    // 5.1 / 5.2 create + duplicate; 5.3 ip_addr and string subnetId
    let r = api.post_json(t, "overlay/addresses/", r#"{"ip":"192.0.2.50","subnetId":1,"hostname":"fixed.example.invalid","description":"fixed","owner":"overlay"}"#).await;
    assert_like(
        &r,
        201,
        r#"{"code":201,"success":true,"message":"Address created","id":"14","time":0.01}"#,
    );
    let fixed = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .post_json(
            t,
            "overlay/addresses/",
            r#"{"ip":"192.0.2.50","subnetId":1,"hostname":"dup.example.invalid"}"#,
        )
        .await;
    assert_error(&r, 409, "IP address already exists");
    let r = api
        .post_json(
            t,
            "overlay/addresses/",
            r#"{"ip_addr":"192.0.2.51","subnetId":"1","hostname":"fixed51.example.invalid"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    // 5.4 - 5.8
    for ip in ["198.51.100.50", "192.0.2.0", "192.0.2.255"] {
        let r = api
            .post_json(
                t,
                "overlay/addresses/",
                &format!(r#"{{"ip":"{ip}","subnetId":1}}"#),
            )
            .await;
        assert_eq!(r.status, 500);
        assert_eq!(
            r.message(),
            format!("{ip} is not a valid address for subnet 192.0.2.0/24")
        );
    }
    let r = api
        .post_json(t, "overlay/addresses/", r#"{"ip":"192.0.2.52"}"#)
        .await;
    assert_error(&r, 400, "SubnetId must be numeric");
    let r = api
        .post_json(
            t,
            "overlay/addresses/",
            r#"{"ip":"192.0.2.52","subnetId":999}"#,
        )
        .await;
    assert_error(&r, 404, "Invalid subnet Id");
    // 5.8a / 5.8b hostnames are not unique; the second hit carries a decimal ip.
    let r = api
        .req("POST", "overlay/addresses/", &[("token", t)], Some("ip=192.0.2.52&subnetId=1&hostname=vm-json.example.invalid&description=dup-hostname"))
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .get(
            t,
            "overlay/addresses/search_hostname/vm-json.example.invalid/",
        )
        .await;
    let hits = r.body["data"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["ip"], "192.0.2.3");
    assert_eq!(hits[1]["ip"], "3221226036");
    fixed
}

/// 5.9 - 5.18: changes and deletes, `fixed` first.
async fn patches_and_deletes(api: &Api, t: &str, fixed: &str) {
    // 5.9 - 5.13 PATCH
    let r = api
        .req(
            "PATCH",
            &format!("overlay/addresses/{fixed}/"),
            &[
                ("token", t),
                ("content-type", "application/json; charset=utf-8"),
            ],
            Some(r#"{"hostname":"renamed.example.invalid","description":"patched"}"#),
        )
        .await;
    assert_message(&r, 200, "Address updated");
    let r = api.get(t, &format!("overlay/addresses/{fixed}/")).await;
    assert_eq!(r.body["data"]["hostname"], "renamed.example.invalid");
    assert!(r.body["data"]["editDate"].is_string());
    let r = api
        .req(
            "PATCH",
            &format!("overlay/addresses/{fixed}/"),
            &[("token", t), ("content-type", "application/json")],
            Some(r#"{"ip":"192.0.2.60"}"#),
        )
        .await;
    assert_error(&r, 400, "IP address cannot be changed");
    let r = api
        .req(
            "PATCH",
            "overlay/addresses/9999/",
            &[("token", t), ("content-type", "application/json")],
            Some(r#"{"hostname":"x"}"#),
        )
        .await;
    assert_error(&r, 404, "Address does not exist");
    // 5.14 / 5.15 delete by id: again is a 404
    let r = api
        .send("DELETE", t, &format!("overlay/addresses/{fixed}/"), None)
        .await;
    assert_message(&r, 200, "Address deleted");
    let r = api
        .send("DELETE", t, &format!("overlay/addresses/{fixed}/"), None)
        .await;
    assert_error(&r, 404, "Address does not exist");
    // 5.16 / 5.17 delete by ip: a second time is a PHP fatal
    let r = api
        .send("DELETE", t, "overlay/addresses/192.0.2.2/1/", None)
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .send("DELETE", t, "overlay/addresses/192.0.2.2/1/", None)
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.raw, "");
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // 5.18 ip exists in another subnet
    let r = api
        .send("DELETE", t, "overlay/addresses/192.0.2.3/2/", None)
        .await;
    assert_error(&r, 404, "No addresses found");
}

#[tokio::test]
async fn misc_errors_and_read_only_app() {
    let (_emu, api) = Api::new().await;
    let t = api.login().await;
    let r = api
        .req(
            "POST",
            "overlay/addresses/first_free/1/",
            &[("token", &t), ("content-type", "text/plain")],
            Some("hostname=x"),
        )
        .await;
    assert_error(&r, 415, "Invalid Content type text/plain");
    let r = api
        .post_json(&t, "overlay/addresses/first_free/1/", r#"{"hostname":"#)
        .await;
    assert_error(&r, 400, "Invalid JSON: Syntax error");
    let r = api.get(&t, "overlay/nosuch/").await;
    assert_error(&r, 400, "Invalid controller");
    let r = api.get(&t, "overlay/").await;
    assert_error(&r, 400, "Request is not valid");
    // 7.5 / 7.6 read-only app
    let r = api
        .send("POST", &t, "overlay_ro/addresses/first_free/1/", None)
        .await;
    assert_error(&r, 401, "invalid permissions");
    assert_eq!(r.headers["location"], "/api//user/");
    let r = api.get(&t, "overlay_ro/subnets/1/first_free/").await;
    assert_like(
        &r,
        200,
        r#"{"code":200,"success":true,"data":"192.0.2.2","time":0.004}"#,
    );
}

#[tokio::test]
async fn login_failures_block_the_ip() {
    let (emu, api) = Api::new().await;
    let t = api.login().await;
    let wrong = || async {
        let r = api.basic_login(USER, "wrong-password").await;
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (s, v["message"].as_str().unwrap().to_string())
    };
    for _ in 0..11 {
        assert_eq!(wrong().await, (500, "Invalid username or password".into()));
    }
    let blocked = "Your IP has been blocked for 5 minutes because of excessive login failures";
    assert_eq!(wrong().await, (500, blocked.into()));
    // Even a valid token is refused.
    let r = api.get(&t, "overlay/subnets/1/first_free/").await;
    assert_eq!((r.status, r.message()), (500, blocked));
    emu.clear_login_block();
    assert_eq!(
        api.get(&t, "overlay/subnets/1/first_free/").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_free_and_logins() {
    let (emu, api) = Api::new().await;
    emu.set_latency(Duration::from_millis(2));
    let t = api.login().await;
    // Section 8: 20 parallel allocations, all 201 and distinct.
    let reqs = (0..20).map(|i| {
        let body = format!(r#"{{"hostname":"race-{i}.example.invalid"}}"#);
        let api = &api;
        let t = &t;
        async move {
            api.post_json(t, "overlay/addresses/first_free/3/", &body)
                .await
        }
    });
    let replies = futures::future::join_all(reqs).await;
    let mut ips: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201);
            r.body["data"].as_str().unwrap().to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20);
    assert_eq!(emu.addresses(3).len(), 20);
    // Against the /29: exactly 6 x 201 + 14 x 404.
    let hdr = [("token", t.as_str())];
    let reqs = (0..20).map(|_| api.req("POST", "overlay/addresses/first_free/2/", &hdr, None));
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for r in futures::future::join_all(reqs).await {
        *codes.entry(r.status).or_default() += 1;
    }
    assert_eq!(codes, BTreeMap::from([(201, 6), (404, 14)]));
    // 8b: parallel logins with no valid token all get the same token.
    emu.expire_tokens();
    let tokens: Vec<String> = futures::future::join_all((0..20).map(|_| api.login())).await;
    assert!(tokens.iter().all(|x| *x == tokens[0]));
    assert_eq!(api.get(&tokens[0], "overlay/subnets/1/").await.status, 200);
}

#[tokio::test]
async fn faults_and_counters() {
    let (emu, api) = Api::new().await;
    let t = api.login().await;
    emu.reset_counts();
    emu.inject(Fault::ServerError, 1);
    let r = api.get(&t, "overlay/subnets/1/").await;
    assert_eq!((r.status, r.raw.as_str()), (500, ""));
    emu.inject(Fault::Refuse, 1);
    let cut = api
        .http
        .get(format!("{}/api/overlay/subnets/1/", api.base))
        .header("token", &t)
        .send()
        .await;
    let failed = match cut {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(
        failed,
        "a refused request must not yield a complete response"
    );
    emu.inject(Fault::ExpireToken, 1);
    assert_eq!(api.get(&t, "overlay/subnets/1/").await.status, 401);
    emu.inject(Fault::Slow(Duration::from_millis(1)), 1);
    let t = api.login().await;
    assert_eq!(api.get(&t, "overlay/subnets/1/").await.status, 200);
    assert_eq!(emu.requests(), 5);
    assert_eq!(emu.count("GET /subnets/{}/"), 4);
    assert_eq!(emu.count("POST /user/"), 1);
}

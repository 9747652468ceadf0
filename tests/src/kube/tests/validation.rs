//! Validation against the CRD schema, and of metadata without it.

use super::*;

#[tokio::test]
async fn schema_validation() {
    let server = server(true);
    let c = client(&server).await;
    let pay = api(&c, "pay");
    let strict = pp().validation_strict();
    // Bad metadata is refused with or without the schema.
    let mut bad_label = policy("pay", "bad", "DENY");
    bad_label["metadata"]["labels"]["verity.dev/revocation"] = json!("not a label value!");
    let e = api_status(pay.patch("bad", &strict, &Patch::Apply(&bad_label)).await.unwrap_err());
    assert_eq!(
        (e.code, e.details.unwrap().causes[0].field.as_str()),
        (422, "metadata.labels")
    );
    if !has_schema(&server) {
        return;
    }
    // What Verity sends passes.
    pay.patch("deny-cart", &strict, &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
        .await
        .unwrap();
    let mut jwt = policy("pay", "deny-alice", "DENY");
    jwt["spec"]["rules"][0]["from"][0]["source"] = json!({"requestPrincipals": ["https://issuer.example/alice"]});
    pay.patch("deny-alice", &strict, &Patch::Apply(&jwt)).await.unwrap();
    assert!(server.validated() >= 3);
    assert!(server.cel_rules_skipped() > 0);

    let refuse = |obj: Value| {
        let pay = pay.clone();
        async move {
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            api_status(
                pay.patch(&name, &pp().validation_strict(), &Patch::Apply(&obj))
                    .await
                    .unwrap_err(),
            )
        }
    };
    let e = refuse(policy("pay", "bad", "BLOCK")).await;
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "AuthorizationPolicy.security.istio.io \"bad\" is invalid: spec.action: Unsupported value: \"BLOCK\": supported values: \"ALLOW\", \"DENY\", \"AUDIT\", \"CUSTOM\""
    );
    let d = e.details.unwrap();
    assert_eq!(
        (d.kind.as_str(), d.group.as_str(), d.name.as_str()),
        (KIND, GROUP, "bad")
    );
    assert_eq!(
        (d.causes[0].reason.as_str(), d.causes[0].field.as_str()),
        ("FieldValueNotSupported", "spec.action")
    );

    let mut many = policy("pay", "bad", "DENY");
    many["spec"]["targetRefs"] = json!(
        (0..17)
            .map(|i| json!({"kind": "Service", "name": format!("s{i}")}))
            .collect::<Vec<_>>()
    );
    let e = refuse(many).await;
    let c0 = &e.details.unwrap().causes[0];
    assert_eq!(
        (c0.reason.as_str(), c0.field.as_str()),
        ("FieldValueTooMany", "spec.targetRefs")
    );
    assert_eq!(c0.message, "Too many: 17: must have at most 16 items");

    let mut missing = policy("pay", "bad", "DENY");
    missing["spec"]["targetRefs"] = json!([{"name": "s", "group": "Not A Group"}]);
    let e = refuse(missing).await;
    let mut got: Vec<(String, String)> = e
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| (c.reason, c.field))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("FieldValueInvalid".to_string(), "spec.targetRefs[0].group".to_string()),
            ("FieldValueRequired".to_string(), "spec.targetRefs[0].kind".to_string())
        ]
    );

    let mut long = policy("pay", "bad", "DENY");
    long["spec"]["rules"][0]["from"][0]["source"] = json!({"serviceAccounts": ["x".repeat(321)]});
    let e = refuse(long).await;
    assert_eq!(e.details.unwrap().causes[0].reason, "FieldValueTooLong");

    let mut typed = policy("pay", "bad", "DENY");
    typed["spec"]["action"] = json!(5);
    let e = refuse(typed).await;
    assert_eq!(e.details.unwrap().causes[0].reason, "FieldValueTypeInvalid");

    // Unknown fields: Strict refuses, Warn prunes with a warning, Ignore prunes silently.
    let mut unknown = policy("pay", "bad", "DENY");
    unknown["spec"]["rules"][0]["from"][0]["source"]["foo"] = json!(["x"]);
    let e = refuse(unknown.clone()).await;
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        e.message,
        "strict decoding error: unknown field \"spec.rules[0].from[0].source.foo\""
    );
    assert!(server.get("pay", "bad").is_none());
    let path = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/bad?fieldManager=verity&force=true";
    let (code, headers, o) = raw(&c, "PATCH", path, Some(APPLY_PATCH), &unknown.to_string()).await;
    assert_eq!(code, 201);
    assert_eq!(
        headers.get("warning").and_then(|v| v.to_str().ok()),
        Some(r#"299 - "unknown field \"spec.rules[0].from[0].source.foo\"""#)
    );
    assert!(o["spec"]["rules"][0]["from"][0]["source"].get("foo").is_none());
    assert!(
        server.get("pay", "bad").unwrap()["spec"]["rules"][0]["from"][0]["source"]
            .get("foo")
            .is_none()
    );
    let (code, headers, _) = raw(
        &c,
        "PATCH",
        &format!("{path}&fieldValidation=Ignore"),
        Some(APPLY_PATCH),
        &unknown.to_string(),
    )
    .await;
    assert_eq!((code, headers.get("warning")), (200, None));

    // Every refusal is recorded with what was sent.
    let rejections = server.rejections();
    assert!(
        rejections
            .iter()
            .any(|r| r.status["code"] == 422 && r.body.contains("BLOCK"))
    );
    assert!(rejections.iter().all(|r| r.method == "PATCH"));
}

#[tokio::test]
async fn metadata_validation_without_schema() {
    let server = server(false);
    assert!(!server.schema_loaded());
    let c = client(&server).await;
    let pay = api(&c, "pay");
    // Without the schema the spec is not checked.
    pay.patch("ok", &pp(), &Patch::Apply(&policy("pay", "ok", "BLOCK")))
        .await
        .unwrap();
    assert_eq!(server.validated(), 0);

    let e = api_status(
        pay.patch("Bad_Name", &pp(), &Patch::Apply(&policy("pay", "Bad_Name", "DENY")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.details.unwrap().causes[0].field.as_str()),
        (422, "metadata.name")
    );
    let mut key = policy("pay", "k", "DENY");
    key["metadata"]["labels"] = json!({"bad key": "v"});
    let e = api_status(pay.patch("k", &pp(), &Patch::Apply(&key)).await.unwrap_err());
    assert!(e.message.starts_with("AuthorizationPolicy.security.istio.io \"k\" is invalid: metadata.labels: Invalid value: \"bad key\": name part must consist of"), "{}", e.message);
    let mut long_value = policy("pay", "k", "DENY");
    long_value["metadata"]["labels"] = json!({"k": "v".repeat(64)});
    assert_eq!(
        api_status(pay.patch("k", &pp(), &Patch::Apply(&long_value)).await.unwrap_err()).code,
        422
    );
    let mut big = policy("pay", "k", "DENY");
    big["metadata"]["annotations"] = json!({"verity.dev/blob": "x".repeat(ANNOTATIONS_MAX_BYTES)});
    let e = api_status(pay.patch("k", &pp(), &Patch::Apply(&big)).await.unwrap_err());
    let c0 = &e.details.unwrap().causes[0];
    assert_eq!(
        (c0.reason.as_str(), c0.field.as_str()),
        ("FieldValueTooLong", "metadata.annotations")
    );
    let mut meta = policy("pay", "k", "DENY");
    meta["metadata"]["colour"] = json!("red");
    let e = api_status(
        pay.patch("k", &pp().validation_strict(), &Patch::Apply(&meta))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "strict decoding error: unknown field \"metadata.colour\"")
    );
    let mut good = policy("pay", "k", "DENY");
    good["metadata"]["labels"] = json!({"example.com/tier": "", "a.b-c_d": "Z9"});
    good["metadata"]["annotations"] = json!({"Example.com/Note": "anything at all"});
    pay.patch("k", &pp(), &Patch::Apply(&good)).await.unwrap();
}

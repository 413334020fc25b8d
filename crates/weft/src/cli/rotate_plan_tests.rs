use control_plane::fleet::{LastRefresh, UnmanagedView};

use super::*;
use crate::cli::check_plane::tests::{fleet, proxy};

fn rotation(phase: Phase) -> Rotation {
    Rotation {
        phase,
        old_anchors_pem: "OLD".into(),
        old_anchors: vec!["a".into()],
        new_anchor_pem: "NEW".into(),
        new_anchor: "n".into(),
        new_anchor_file: "ca2.crt".into(),
        old_issuer: "i".into(),
        new_issuer: Some("j".into()),
        started_unix: 1,
        expected: Default::default(),
    }
}

/// A connected proxy on issuer `issuer` under anchor `anchor`.
fn on(workload: &str, issuer: &str, anchor: &str) -> ProxyView {
    let mut p = proxy(workload, 2, "connected");
    p.issuer_sha256 = issuer.into();
    p.anchor_sha256 = anchor.into();
    p
}

#[test]
fn each_command_runs_in_its_phases_only_and_resumes_an_interrupted_run() {
    use Admit::*;
    use Command::*;
    use Phase::*;
    let table = [
        (Prepare, None, Ok(Start)),
        (Prepare, Some(Preparing), Ok(Resume)),
        (Prepare, Some(Prepared), Ok(AlreadyDone)),
        (Prepare, Some(Retired), Ok(Start)),
        (Activate, Some(Prepared), Ok(Start)),
        (Activate, Some(Activating), Ok(Resume)),
        (Activate, Some(Activated), Ok(AlreadyDone)),
        (Retire, Some(Activating), Ok(Start)),
        (Retire, Some(Activated), Ok(Start)),
        (Retire, Some(Retiring), Ok(Resume)),
        (Retire, Some(Retired), Ok(AlreadyDone)),
        (Abort, Some(Preparing), Ok(Start)),
        (Abort, Some(Retiring), Ok(Start)),
    ];
    for (cmd, phase, want) in table {
        assert_eq!(admit(phase, cmd), want, "{cmd:?} in {phase:?}");
    }
    assert_eq!(
        admit(None, Activate),
        Err(PlanError::NoRotation("activate"))
    );
    assert_eq!(admit(Some(Retired), Abort), Err(PlanError::Complete));
    let e = admit(Some(Prepared), Retire).unwrap_err();
    assert!(
        e.to_string()
            .contains("retire needs the activate phase done first"),
        "{e}"
    );
    let e = admit(Some(Activated), Prepare).unwrap_err();
    assert!(matches!(e, PlanError::PastIt { .. }), "{e}");
    let e = admit(Some(Retiring), Activate).unwrap_err();
    assert!(matches!(e, PlanError::PastIt { .. }), "{e}");
    assert!(matches!(
        admit(Some(Preparing), Activate),
        Err(PlanError::TooEarly {
            need: "prepare",
            ..
        })
    ));

    // Abort goes back one safe state; the old anchor stays until retire.
    assert_eq!(back_to(Preparing), None);
    assert_eq!(back_to(Activating), Some(Prepared));
    assert_eq!(back_to(Activated), Some(Prepared));
    assert_eq!(back_to(Retiring), Some(Activated));
    let r = rotation(Prepared);
    assert_eq!(anchors_for(None, &r), vec!["a"]);
    assert_eq!(anchors_for(Some(Activated), &r), vec!["a", "n"]);
    assert_eq!(anchors_for(Some(Retiring), &r), vec!["n"]);
}

#[test]
fn the_old_anchor_is_needed_while_a_leaf_an_unmanaged_cert_or_the_issuer_chains_to_it() {
    let r = rotation(Phase::Activated);
    let mut v = fleet(vec![on("web/a", "j", "n"), on("web/b", "j", "n")]);
    {
        let b = v.bundle.as_mut().unwrap();
        b.anchors = vec!["a".into(), "n".into()];
        b.issuer_sha256 = "j".into();
        b.issuer_anchor = "n".into();
    }
    assert_eq!(
        dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`"),
        vec![]
    );
    assert_eq!(
        blockers(
            Some(Phase::Activated),
            Some(&r),
            &v,
            "`curl -X POST http://127.0.0.1:9990/renew-now`"
        ),
        Vec::<String>::new()
    );

    // A proxy that could not renew, by name, with why.
    v.proxies[1] = on("web/b", "i", "a");
    v.proxies[1].last_refresh = LastRefresh::Failed("identity service unreachable".into());
    let d = dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].name.starts_with("web/b (b.web.serviceaccount"),
        "{d:?}"
    );
    assert!(d[0].why.contains("identity service unreachable"), "{d:?}");
    assert!(
        d[0].why
            .contains("curl -X POST http://127.0.0.1:9990/renew-now"),
        "{d:?}"
    );
    // A stale one's live leaf counts too; an expired one does not.
    v.proxies[1].state = "stale".into();
    assert_eq!(
        dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`").len(),
        1
    );
    v.proxies[1].expires_in_s = 0;
    assert_eq!(
        dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`"),
        vec![]
    );

    // An unmanaged certificate from the old issuer; not one from the new.
    let identity: pki::Identity = "legacy.web.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap();
    let unmanaged = |issuer: &str| UnmanagedView {
        identity: identity.clone(),
        serial: "07".into(),
        issuer_sha256: issuer.into(),
        not_after: 2000,
        expires_in_s: 1000,
        token_only: true,
        note: String::new(),
    };
    v.unmanaged = vec![unmanaged("i")];
    let d = dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].name, identity.to_string());
    v.unmanaged = vec![unmanaged("j")];
    assert_eq!(
        dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`"),
        vec![]
    );

    // The issuer in force still chaining to the old anchor.
    v.bundle.as_mut().unwrap().issuer_anchor = "a".into();
    let d = dependents(&v, &r, "`curl -X POST http://127.0.0.1:9990/renew-now`");
    assert!(d[0].name.starts_with("the issuer in force"), "{d:?}");
    let b = blockers(
        Some(Phase::Activated),
        Some(&r),
        &v,
        "`curl -X POST http://127.0.0.1:9990/renew-now`",
    );
    assert!(b[0].contains("chains only to the old anchor"), "{b:?}");
}

#[test]
fn status_names_what_blocks_each_phase() {
    let r = rotation(Phase::Preparing);
    let mut v = fleet(vec![on("web/a", "i", "a"), on("web/b", "i", "a")]);
    // The control plane still serves the old bundle alone.
    let b = blockers(
        Some(Phase::Preparing),
        Some(&r),
        &v,
        "`curl -X POST http://127.0.0.1:9990/renew-now`",
    );
    assert_eq!(
        b,
        vec!["the control plane does not serve the bundle holding the new anchor yet"]
    );
    v.bundle.as_mut().unwrap().anchors = vec!["a".into(), "n".into()];
    v.proxies[0].bundle_current = false;
    let b = blockers(
        Some(Phase::Prepared),
        Some(&r),
        &v,
        "`curl -X POST http://127.0.0.1:9990/renew-now`",
    );
    assert_eq!(
        b,
        vec!["web/a has not acknowledged the bundle holding the new anchor"]
    );
    let b = blockers(
        Some(Phase::Activating),
        Some(&r),
        &v,
        "`curl -X POST http://127.0.0.1:9990/renew-now`",
    );
    assert!(b[0].contains("does not serve the new issuer"), "{b:?}");
    v.bundle.as_mut().unwrap().issuer_sha256 = "j".into();
    v.proxies[1].issuer_sha256 = "j".into();
    let b = blockers(
        Some(Phase::Activating),
        Some(&r),
        &v,
        "`curl -X POST http://127.0.0.1:9990/renew-now`",
    );
    assert_eq!(b, vec!["web/a has no leaf yet from the new issuer"]);
    assert!(
        blockers(
            None,
            None,
            &v,
            "`curl -X POST http://127.0.0.1:9990/renew-now`"
        )
        .is_empty()
    );
    assert_eq!(label("n", &r.old_anchors, "n"), "new (n)");
    assert_eq!(label("a", &r.old_anchors, "n"), "old (a)");
    assert_eq!(label("", &r.old_anchors, "n"), "none");
}

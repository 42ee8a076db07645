use super::*;

/// The smallest component: its preamble.
fn empty_component() -> Vec<u8> {
    wasm_encoder::Component::new().finish()
}

fn key() -> SigningKey {
    SigningKey::generate().expect("a key")
}

#[test]
fn a_public_key_round_trips_as_text_and_bad_ones_are_refused() {
    let public = key().public_key();
    let text = public.to_string();
    assert!(text.starts_with("ed25519:"), "{text}");
    assert_eq!(text.parse::<PublicKey>().expect("parses"), public);
    assert_eq!(public.id().len(), 16);
    for bad in [
        "",
        "ed25519:",
        "ed25519:not base64!",
        "rsa:AAAA",
        "ed25519:AAAA",
        // The identity point: a weak key.
        "ed25519:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} must not parse");
    }
}

#[test]
fn a_private_key_round_trips_through_pem() {
    let key = key();
    let pem = key.to_pem().expect("encodes");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = SigningKey::from_pem(&pem).expect("decodes");
    assert_eq!(back.public_key(), key.public_key());
    assert!(SigningKey::from_pem("not a key").is_err());
}

#[test]
fn a_signature_verifies_until_the_component_changes() {
    let old = key();
    let new = key();
    let component = empty_component();
    let signed = sign(&component, &old).expect("signs");
    assert!(signed.dropped.is_empty());
    let trusted_old = TrustedKeys::new([old.public_key()]);
    assert_eq!(
        trusted_old.check(&signed.component),
        Ok(Some(old.public_key()))
    );
    // A second key adds to the first; either is enough.
    let both = sign(&signed.component, &new).expect("signs").component;
    assert_eq!(signatures(&both).expect("reads").len(), 2);
    assert!(trusted_old.check(&both).is_ok());
    assert!(TrustedKeys::new([new.public_key()]).check(&both).is_ok());
    // Signing again with the same key replaces its signature.
    let again = sign(&both, &new).expect("signs");
    assert_eq!(again.dropped.len(), 1, "{:?}", again.dropped);
    assert_eq!(signatures(&again.component).expect("reads").len(), 2);

    // Anything appended after signing breaks it, even with no key trusted.
    let mut altered = signed.component.clone();
    wasm_encoder::CustomSection {
        name: "planted".into(),
        data: b"x".as_slice().into(),
    }
    .append_to_component(&mut altered);
    for trusted in [TrustedKeys::default(), trusted_old.clone()] {
        assert!(matches!(
            trusted.check(&altered),
            Err(SignatureError::DoesNotVerify { .. })
        ));
    }
    // Re-signing drops the broken signature and says so.
    let resigned = sign(&altered, &new).expect("signs");
    assert_eq!(resigned.dropped.len(), 1);
    assert!(resigned.dropped[0].contains("no longer verifies"));
}

#[test]
fn trusted_keys_refuse_unsigned_untrusted_and_malformed_components() {
    let trusted_key = key();
    let other = key();
    let trusted = TrustedKeys::new([trusted_key.public_key()]);
    let component = empty_component();
    assert_eq!(TrustedKeys::default().check(&component), Ok(None));
    assert!(matches!(
        trusted.check(&component),
        Err(SignatureError::Unsigned { trusted }) if trusted == [trusted_key.public_key().id()]
    ));
    let by_other = sign(&component, &other).expect("signs").component;
    let refused = trusted.check(&by_other).expect_err("untrusted");
    assert!(matches!(refused, SignatureError::Untrusted { .. }));
    assert!(refused.to_string().contains(&other.public_key().id()));
    assert_eq!(TrustedKeys::default().check(&by_other), Ok(None));

    let mut malformed = component.clone();
    wasm_encoder::CustomSection {
        name: SIGNATURE_SECTION.into(),
        data: b"{not json".as_slice().into(),
    }
    .append_to_component(&mut malformed);
    for trusted in [TrustedKeys::default(), trusted.clone()] {
        assert!(matches!(
            trusted.check(&malformed),
            Err(SignatureError::Malformed(_))
        ));
    }
    assert_eq!(TrustedKeys::default().check(b"garbage"), Ok(None));
    assert!(matches!(
        trusted.check(b"garbage"),
        Err(SignatureError::NotAComponent(_))
    ));
    let module = wasm_encoder::Module::new().finish();
    assert!(matches!(
        trusted.check(&module),
        Err(SignatureError::NotAComponent(_))
    ));
    assert!(sign(&module, &trusted_key).is_err());
}

#[test]
fn a_signature_inside_a_nested_module_is_signed_content() {
    // A nested module's custom sections are part of what is signed.
    let mut module = wasm_encoder::Module::new();
    module.section(&wasm_encoder::CustomSection {
        name: SIGNATURE_SECTION.into(),
        data: b"{}".as_slice().into(),
    });
    let mut component = wasm_encoder::Component::new();
    component.section(&wasm_encoder::ModuleSection(&module));
    let component = component.finish();
    assert!(signatures(&component).expect("reads").is_empty());
    let key = key();
    let signed = sign(&component, &key).expect("signs").component;
    assert!(TrustedKeys::new([key.public_key()]).check(&signed).is_ok());
}

#[test]
fn wedge_a_release_is_signed_content_and_defaults_to_zero() {
    let key = key();
    let other = self::key();
    let trusted = TrustedKeys::new([key.public_key()]);
    let component = empty_component();
    assert_eq!(release(&component), Ok(0));
    let released = with_release(&component, 7).expect("released");
    assert_eq!(release(&released), Ok(7));
    // The same release again changes nothing; another replaces it.
    assert_eq!(with_release(&released, 7).expect("same"), released);
    assert_eq!(
        release(&with_release(&released, u64::MAX).expect("replaced")),
        Ok(u64::MAX)
    );
    let signed = sign(&released, &key).expect("signs").component;
    assert_eq!(release(&signed), Ok(7));
    assert_eq!(trusted.check(&signed), Ok(Some(key.public_key())));
    // A second key signs the same release; both verify.
    let both = sign(&signed, &other).expect("signs").component;
    assert!(TrustedKeys::new([other.public_key()]).check(&both).is_ok());
    assert!(trusted.check(&both).is_ok());
    // The release is covered by the signature: changing it breaks it.
    let relabelled = with_release(&signed, 8).expect("relabelled");
    assert_eq!(release(&relabelled), Ok(8));
    assert!(matches!(
        trusted.check(&relabelled),
        Err(SignatureError::DoesNotVerify { .. })
    ));
    // Re-signing after relabelling drops the stale signature and says so.
    let resigned = sign(&relabelled, &key).expect("signs");
    assert_eq!(resigned.dropped.len(), 1, "{:?}", resigned.dropped);
    assert!(trusted.check(&resigned.component).is_ok());
    // The signed message of a release-less component is unchanged: a signature made
    // before releases existed still verifies, as release 0.
    let unreleased = sign(&component, &key).expect("signs").component;
    assert_eq!(release(&unreleased), Ok(0));
    assert!(trusted.check(&unreleased).is_ok());
}

#[test]
fn wedge_a_malformed_or_repeated_release_section_is_refused() {
    let release_section = |data: &[u8]| {
        let mut component = empty_component();
        wasm_encoder::CustomSection {
            name: RELEASE_SECTION.into(),
            data: data.into(),
        }
        .append_to_component(&mut component);
        component
    };
    for bad in [
        b"".as_slice(),
        b"01",
        b"-1",
        b"+1",
        b"1.0",
        b" 1",
        b"18446744073709551616",
        b"100000000000000000000",
    ] {
        let component = release_section(bad);
        assert!(
            matches!(release(&component), Err(SignatureError::Release(_))),
            "{bad:?}"
        );
        // The signature gate refuses it, keys trusted or not.
        assert!(matches!(
            TrustedKeys::default().check(&component),
            Err(SignatureError::Release(_))
        ));
    }
    assert_eq!(release(&release_section(b"0")), Ok(0));
    assert_eq!(
        release(&release_section(b"18446744073709551615")),
        Ok(u64::MAX)
    );
    let mut twice = release_section(b"3");
    wasm_encoder::CustomSection {
        name: RELEASE_SECTION.into(),
        data: b"4".as_slice().into(),
    }
    .append_to_component(&mut twice);
    assert!(matches!(release(&twice), Err(SignatureError::Release(_))));
    assert!(sign(&twice, &key()).is_err());
}

#[test]
fn content_hashes_are_64_lowercase_hex_digits() {
    assert!(is_content_hash(&crate::rule::content_hash(b"x")));
    for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
        assert!(!is_content_hash(bad), "{bad}");
    }
    assert_eq!(excerpt(&"é".repeat(100)).chars().count(), 81);
}

//! Crate tests: the embedded database against well-known addresses, both layouts
//! round-tripped through [`testdb`](crate::testdb) and [`GeoIp::lookup`], merging
//! across databases, field detection and load errors.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::testdb::{build, Layout, TestEntry};
use crate::{GeoIp, GeoIpError, Location};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn country(geoip: &GeoIp, addr: &str) -> Option<String> {
    geoip.lookup(ip(addr)).country
}

/// A file in the temp dir, unique to this process and test, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("exitpool-geoip-{}-{name}.mmdb", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Agents on loopback addresses, a nested pair of networks and an IPv6 block.
fn sample_entries() -> Vec<TestEntry> {
    vec![
        TestEntry::host(ip("127.0.0.2"))
            .country("US")
            .asn(64_500)
            .city("Springfield")
            .subdivision("il"),
        TestEntry::host(ip("127.0.0.3")).country("de"), // normalized to upper case
        // Listed before the /8 it sits in: the more specific network still wins.
        TestEntry::new(ip("10.1.0.0"), 16).country("GB"),
        TestEntry::new(ip("10.0.0.0"), 8).country("FR"),
        TestEntry::new(ip("2001:db8::"), 32)
            .country("JP")
            .asn(64_501),
    ]
}

#[test]
fn geoip_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GeoIp>();
}

/// Every record of the embedded database decodes and carries a country. (The reader's
/// strict `verify()` is not used: it rejects the file's empty `description` map.)
#[test]
fn embedded_database_is_valid() {
    let reader = maxminddb::Reader::from_source(crate::embedded::DATABASE).expect("opens");
    assert_eq!(reader.metadata().ip_version, 6);
    let mut networks = 0;
    for item in reader.networks(Default::default()).expect("walks") {
        let result = item.expect("tree is sound");
        let record: crate::record::Record<'_> = result
            .decode()
            .expect("record decodes")
            .expect("networks() yields only networks with data");
        assert!(record.country().is_some(), "{:?}", result.network());
        networks += 1;
    }
    assert!(networks > 100_000, "only {networks} networks");
}

#[test]
fn embedded_database_knows_well_known_addresses() {
    let geoip = GeoIp::embedded();
    for (addr, expected) in [
        ("8.8.8.8", "US"),              // Google DNS
        ("80.156.0.1", "DE"),           // Deutsche Telekom
        ("133.242.0.1", "JP"),          // Sakura Internet
        ("193.0.6.139", "NL"),          // RIPE NCC, Amsterdam
        ("2001:4860:4860::8888", "US"), // Google DNS over IPv6
        ("::ffff:8.8.8.8", "US"),       // IPv4-mapped, looked up as IPv4
    ] {
        assert_eq!(country(&geoip, addr).as_deref(), Some(expected), "{addr}");
    }
    // Private and loopback space is in no real database.
    assert_eq!(geoip.lookup(ip("10.0.0.1")), Location::default());
    assert_eq!(geoip.lookup(ip("127.0.0.1")), Location::default());
    assert_eq!(geoip.lookup(ip("::1")), Location::default());

    assert!(geoip.has_country());
    assert!(!geoip.has_asn());
    assert!(!geoip.has_city());
    let lines = geoip.describe();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("embedded ip-location-db"), "{lines:?}");
    assert!(lines[0].contains("fields: country"), "{lines:?}");
}

#[test]
fn both_layouts_round_trip() {
    for layout in [Layout::MaxMind, Layout::IpLocationDb] {
        let geoip = GeoIp::from_bytes(vec![build(layout, &sample_entries())]).expect("loads");
        assert_eq!(
            geoip.lookup(ip("127.0.0.2")),
            Location {
                country: Some("US".into()),
                asn: Some(64_500),
                city: Some("Springfield".into()),
                // ip-location-db carries no subdivision codes.
                region: (layout == Layout::MaxMind).then(|| "US-IL".into()),
            },
            "{layout:?}"
        );
        assert_eq!(
            country(&geoip, "127.0.0.3").as_deref(),
            Some("DE"),
            "{layout:?}"
        );
        assert_eq!(
            country(&geoip, "::ffff:127.0.0.3").as_deref(),
            Some("DE"),
            "{layout:?}"
        );
        assert_eq!(
            country(&geoip, "10.1.2.3").as_deref(),
            Some("GB"),
            "{layout:?}"
        );
        assert_eq!(
            country(&geoip, "10.2.0.1").as_deref(),
            Some("FR"),
            "{layout:?}"
        );
        let v6 = geoip.lookup(ip("2001:db8::1"));
        assert_eq!(v6.country.as_deref(), Some("JP"), "{layout:?}");
        assert_eq!(v6.asn, Some(64_501), "{layout:?}");
        assert!(geoip.has_country() && geoip.has_asn() && geoip.has_city());
    }
}

#[test]
fn unknown_addresses_give_an_empty_location() {
    let geoip = GeoIp::from_bytes(vec![build(Layout::MaxMind, &sample_entries())]).unwrap();
    for addr in ["127.0.0.9", "8.8.8.8", "::1", "2a00::1", "::ffff:127.0.0.9"] {
        assert_eq!(geoip.lookup(ip(addr)), Location::default(), "{addr}");
    }
}

#[test]
fn maxmind_falls_back_to_registered_country() {
    let geoip = GeoIp::from_bytes(vec![build(
        Layout::MaxMind,
        &[
            TestEntry::host(ip("127.0.0.2")).registered_country("SE"),
            TestEntry::host(ip("127.0.0.3"))
                .country("NO")
                .registered_country("SE"),
            TestEntry::host(ip("127.0.0.4"))
                .country("???")
                .registered_country("FI"),
        ],
    )])
    .unwrap();
    assert_eq!(country(&geoip, "127.0.0.2").as_deref(), Some("SE"));
    assert_eq!(country(&geoip, "127.0.0.3").as_deref(), Some("NO"));
    assert_eq!(country(&geoip, "127.0.0.4").as_deref(), Some("FI"));
}

#[test]
fn databases_merge_field_by_field_first_wins() {
    let countries = build(
        Layout::IpLocationDb,
        &[TestEntry::new(ip("127.0.0.0"), 8).country("US")],
    );
    let asns = build(
        Layout::MaxMind,
        &[TestEntry::new(ip("127.0.0.0"), 24).asn(64_496)],
    );
    let cities = build(
        Layout::MaxMind,
        &[TestEntry::host(ip("127.0.0.2"))
            .country("CA")
            .city("Toronto")],
    );

    let geoip = GeoIp::from_bytes(vec![countries.clone(), asns.clone(), cities.clone()]).unwrap();
    assert_eq!(
        geoip.lookup(ip("127.0.0.2")),
        Location {
            country: Some("US".into()),
            asn: Some(64_496),
            city: Some("Toronto".into()),
            region: None,
        }
    );
    // Only some databases cover 127.1.0.1.
    assert_eq!(
        geoip.lookup(ip("127.1.0.1")),
        Location {
            country: Some("US".into()),
            ..Location::default()
        }
    );
    assert_eq!(geoip.describe().len(), 3);

    // Order decides which country wins.
    let geoip = GeoIp::from_bytes(vec![cities, asns, countries]).unwrap();
    assert_eq!(country(&geoip, "127.0.0.2").as_deref(), Some("CA"));
    assert_eq!(country(&geoip, "127.0.0.3").as_deref(), Some("US"));
}

#[test]
fn regions_come_from_the_first_subdivision_and_its_country() {
    let geoip = GeoIp::from_bytes(vec![build(
        Layout::MaxMind,
        &[
            TestEntry::host(ip("127.0.0.2"))
                .country("us")
                .subdivision("ca"),
            TestEntry::host(ip("127.0.0.3"))
                .country("DE")
                .subdivision("BY"),
            // No geolocated country of its own: no region either.
            TestEntry::host(ip("127.0.0.4"))
                .registered_country("FR")
                .subdivision("IDF"),
            // Not a subdivision code: skipped, the rest of the record kept.
            TestEntry::host(ip("127.0.0.5"))
                .country("GB")
                .subdivision("ENG-X"),
        ],
    )])
    .unwrap();
    let region = |addr: &str| geoip.lookup(ip(addr)).region;
    assert_eq!(region("127.0.0.2").as_deref(), Some("US-CA"));
    assert_eq!(region("127.0.0.3").as_deref(), Some("DE-BY"));
    assert_eq!(region("127.0.0.4"), None);
    assert_eq!(region("127.0.0.5"), None);
    assert_eq!(country(&geoip, "127.0.0.5").as_deref(), Some("GB"));
    assert!(geoip.has_region());
    assert!(
        geoip.describe()[0].contains("region"),
        "{:?}",
        geoip.describe()
    );

    // A MaxMind record whose `subdivisions` has another shape still decodes.
    let mut writer = mmdb_writer::Writer::new("exitpool-test-odd");
    let record = mmdb_writer::Value::map([
        ("country", mmdb_writer::Value::map([("iso_code", "IT")])),
        ("subdivisions", mmdb_writer::Value::from("not a list")),
    ]);
    writer
        .insert_value(
            "127.0.0.2/32".parse::<mmdb_writer::ipnet::IpNet>().unwrap(),
            record,
        )
        .unwrap();
    let odd = GeoIp::from_bytes(vec![writer.to_bytes().unwrap()]).unwrap();
    let found = odd.lookup(ip("127.0.0.2"));
    assert_eq!((found.country.as_deref(), found.region), (Some("IT"), None));
    assert!(!odd.has_region());
}

#[test]
fn has_fields_reflect_the_loaded_databases() {
    let only =
        |entry: TestEntry| GeoIp::from_bytes(vec![build(Layout::IpLocationDb, &[entry])]).unwrap();
    let countries = only(TestEntry::host(ip("127.0.0.2")).country("US"));
    assert!(countries.has_country() && !countries.has_asn() && !countries.has_city());
    let asns = only(TestEntry::host(ip("127.0.0.2")).asn(64_496));
    assert!(!asns.has_country() && asns.has_asn() && !asns.has_city());
    let cities = only(TestEntry::host(ip("127.0.0.2")).city("Paris"));
    assert!(!cities.has_country() && !cities.has_asn() && cities.has_city());
    assert!(
        cities.describe()[0].contains("fields: city"),
        "{:?}",
        cities.describe()
    );
}

#[test]
fn maxmind_product_names_declare_fields() {
    // A GeoLite2-City database whose only record lacks a city still has_city().
    let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
    let record =
        mmdb_writer::Value::map([("country", mmdb_writer::Value::map([("iso_code", "IT")]))]);
    writer
        .insert_value(
            "127.0.0.2/32".parse::<mmdb_writer::ipnet::IpNet>().unwrap(),
            record,
        )
        .unwrap();
    let geoip = GeoIp::from_bytes(vec![writer.to_bytes().unwrap()]).unwrap();
    assert!(geoip.has_country() && geoip.has_city() && !geoip.has_asn());
    assert_eq!(country(&geoip, "127.0.0.2").as_deref(), Some("IT"));
}

#[test]
fn ipv4_only_databases_answer_ipv6_with_nothing() {
    let mut writer = mmdb_writer::Writer::builder("exitpool-test-ipv4")
        .ip_version(mmdb_writer::IpVersion::V4)
        .build();
    writer
        .insert_value(
            "127.0.0.0/8".parse::<mmdb_writer::ipnet::IpNet>().unwrap(),
            mmdb_writer::Value::map([("country_code", "BR")]),
        )
        .unwrap();
    let geoip = GeoIp::from_bytes(vec![writer.to_bytes().unwrap()]).unwrap();
    assert_eq!(country(&geoip, "127.0.0.2").as_deref(), Some("BR"));
    assert_eq!(country(&geoip, "::ffff:127.0.0.2").as_deref(), Some("BR"));
    assert_eq!(geoip.lookup(ip("2001:db8::1")), Location::default());
}

#[test]
fn open_reads_files_and_names_the_bad_one() {
    let good = TempFile::new("good", &build(Layout::MaxMind, &sample_entries()));
    let bad = TempFile::new("bad", b"this is not a MaxMind database");
    let missing = good.0.with_file_name(format!(
        "exitpool-geoip-{}-missing.mmdb",
        std::process::id()
    ));

    let geoip = GeoIp::open(&[&good.0]).expect("opens");
    assert_eq!(country(&geoip, "127.0.0.2").as_deref(), Some("US"));
    assert!(geoip.describe()[0].starts_with(&good.0.display().to_string()));

    match GeoIp::open(&[&good.0, &bad.0]) {
        Err(err @ GeoIpError::Invalid { .. }) => {
            let GeoIpError::Invalid { database, .. } = &err else {
                unreachable!()
            };
            assert_eq!(database, &bad.0.display().to_string());
            assert!(err.to_string().contains(database.as_str()), "{err}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    match GeoIp::open(&[&missing, &good.0]) {
        Err(err @ GeoIpError::Read { .. }) => {
            assert!(
                err.to_string().contains(&missing.display().to_string()),
                "{err}"
            );
        }
        other => panic!("expected Read, got {other:?}"),
    }

    let empty: &[&str] = &[];
    assert!(matches!(GeoIp::open(empty), Err(GeoIpError::NoDatabase)));
}

#[test]
fn from_bytes_names_the_bad_database_by_position() {
    let good = build(Layout::IpLocationDb, &sample_entries());
    let err = GeoIp::from_bytes(vec![good, b"garbage".to_vec()]).unwrap_err();
    assert!(
        matches!(&err, GeoIpError::Invalid { database, .. } if database == "in-memory database #1"),
        "{err:?}"
    );
    assert!(matches!(
        GeoIp::from_bytes(Vec::new()),
        Err(GeoIpError::NoDatabase)
    ));
}

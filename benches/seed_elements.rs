//! Federation elements for the living donors `benches/seed.sql` makes, in
//! `COPY` text form (`g`, donor element, recipient element), for seed.sql's
//! opt-in `elements` variable: a registry seeded with them can be synced at
//! scale. Seeded record `g` is a living donation when `g % 10 >= 7`; its
//! donor's passport is `S{g}` when `(g / 10) % shared == 0` (the same person
//! in every registry seeded with the same `shared`: 3 in every `10·shared`
//! records) and `{prefix}{g}` otherwise (this registry's alone); `shared` 0
//! shares none.
//!
//! ```text
//! cargo run --release -p transplant-audit-core --example seed_elements -- \
//!     FEDERATION_KEY_HEX N PREFIX SHARED > elements.tsv
//! psql "$DATABASE_URL" -v n=N -v elements=elements.tsv -f benches/seed.sql
//! ```

use std::io::{BufWriter, Write};

use transplant_audit_core::domain::{FederationKey, IdentifierScheme, PersonIdentifier};

/// Records computed and written at a time.
const CHUNK: u64 = 65_536;

fn passport(value: &str) -> Result<PersonIdentifier, String> {
    let country = "MD".parse().map_err(|_| "a country".to_owned())?;
    PersonIdentifier::new(IdentifierScheme::Passport, country, value).map_err(|e| format!("{e:?}"))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, n, prefix, shared] = args.as_slice() else {
        return Err("usage: seed_elements FEDERATION_KEY_HEX N PREFIX SHARED".into());
    };
    let secret = hex::decode(key.trim()).map_err(|e| format!("the key: {e}"))?;
    let key = FederationKey::from_bytes(&secret).map_err(|e| e.to_string())?;
    let n: u64 = n.parse().map_err(|e| format!("N: {e}"))?;
    let shared: u64 = shared.parse().map_err(|e| format!("SHARED: {e}"))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lo = 1;
    while lo <= n {
        let hi = (lo + CHUNK - 1).min(n);
        let living: Vec<u64> = (lo..=hi).filter(|g| g % 10 >= 7).collect();
        let people = living
            .iter()
            .map(|g| {
                let donor = match shared {
                    0 => passport(&format!("{prefix}{g}")),
                    s if (g / 10) % s == 0 => passport(&format!("S{g}")),
                    _ => passport(&format!("{prefix}{g}")),
                }?;
                Ok((donor, passport(&format!("R{prefix}{g}"))?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let pairs: Vec<_> = people.iter().map(|(d, r)| (d, r)).collect();
        for (g, e) in living.iter().zip(key.records_elements(&pairs)) {
            writeln!(
                out,
                "{g}\t\\\\x{}\t\\\\x{}",
                hex::encode(e.donor.as_bytes()),
                hex::encode(e.recipient.as_bytes())
            )
            .map_err(|e| e.to_string())?;
        }
        lo = hi + 1;
    }
    out.flush().map_err(|e| e.to_string())
}

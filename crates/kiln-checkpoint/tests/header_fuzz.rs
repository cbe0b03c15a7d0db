//! The header parser reads untrusted bytes: it must return an error, never panic, for anything,
//! and must accept exactly what it writes.

use kiln_checkpoint::{Dtype, Header};
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(Dtype::ALL.to_vec())
}

fn valid_file() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            "[a-z._0-9]{1,12}",
            dtype(),
            prop::collection::vec(0usize..5, 0..3),
        ),
        0..6,
    )
    .prop_map(|tensors| {
        let mut seen = std::collections::HashSet::new();
        let tensors: Vec<_> = tensors
            .into_iter()
            .filter(|(n, _, _)| seen.insert(n.clone()))
            .collect();
        let entries: Vec<(&str, Dtype, &[usize])> = tensors
            .iter()
            .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
            .collect();
        let mut f = Header::encode(&Default::default(), &entries);
        let data: usize = tensors
            .iter()
            .map(|(_, d, s)| s.iter().product::<usize>() * d.size())
            .sum();
        f.extend(std::iter::repeat_n(7u8, data));
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Header::parse(&bytes, "fuzz");
    }

    #[test]
    fn arbitrary_json_after_a_valid_prefix_never_panics(json in "\\PC{0,200}", extra in 0usize..64) {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.extend(std::iter::repeat_n(0u8, extra));
        let _ = Header::parse(&f, "fuzz");
    }

    #[test]
    fn written_headers_parse_back(file in valid_file()) {
        let h = Header::parse(&file, "fuzz").unwrap();
        let data_len = file.len() - h.data_start;
        for t in &h.tensors {
            prop_assert!(t.data_offsets.1 <= data_len);
        }
    }

    #[test]
    fn mutated_valid_files_never_panic(file in valid_file(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut f = file.clone();
        if !f.is_empty() {
            let i = at.index(f.len());
            f[i] = byte;
        }
        let _ = Header::parse(&f, "fuzz");
        let n = cut.index(file.len() + 1);
        let _ = Header::parse(&file[..n], "fuzz");
    }
}

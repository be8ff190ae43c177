//! Continents by country, for `-continent-eu` targeting: the seven two-letter
//! codes MaxMind's databases use (`af`, `an`, `as`, `eu`, `na`, `oc`, `sa`), each
//! with the ISO 3166-1 countries its databases place there. A country is in
//! exactly one continent (Russia and Turkey as MaxMind files them: `eu`, `as`).

/// Continent code -> its countries (ISO 3166-1 alpha-2, space-separated).
const CONTINENTS: [(&str, &str); 7] = [
    (
        "af",
        "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA \
         MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    ),
    ("an", "AQ BV GS HM TF"),
    (
        "as",
        "AE AF AM AZ BD BH BN BT CC CN CX CY GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA \
         LB LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE",
    ),
    (
        "eu",
        "AD AL AT AX BA BE BG BY CH CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI \
         LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    ),
    (
        "na",
        "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX \
         NI PA PM PR SV SX TC TT US VC VG VI",
    ),
    (
        "oc",
        "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    ),
    ("sa", "AR BO BR CL CO EC FK GF GY PE PY SR UY VE"),
];

/// The continent codes, for error messages.
pub const CONTINENT_CODES: [&str; 7] = ["af", "an", "as", "eu", "na", "oc", "sa"];

/// The countries of continent `code` (any case), upper case; `None` for an
/// unknown code.
pub fn countries_of(code: &str) -> Option<Vec<String>> {
    let code = code.to_ascii_lowercase();
    CONTINENTS
        .iter()
        .find(|(continent, _)| *continent == code)
        .map(|(_, countries)| countries.split_whitespace().map(str::to_owned).collect())
}

/// The continent of `country` (ISO alpha-2, any case), lower case.
pub fn continent_of(country: &str) -> Option<&'static str> {
    let country = country.to_ascii_uppercase();
    CONTINENTS
        .iter()
        .find(|(_, countries)| countries.split_whitespace().any(|c| c == country))
        .map(|(continent, _)| *continent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_country_is_in_one_continent() {
        let mut seen = HashSet::new();
        for (continent, countries) in CONTINENTS {
            for country in countries.split_whitespace() {
                assert_eq!(country.len(), 2, "{country}");
                assert!(
                    seen.insert(country),
                    "{country} is in two continents ({continent})"
                );
            }
        }
        assert!(seen.len() > 240, "{}", seen.len());
        assert_eq!(continent_of("de"), Some("eu"));
        assert_eq!(continent_of("US"), Some("na"));
        assert_eq!(countries_of("SA").unwrap().len(), 14);
        assert_eq!(countries_of("xx"), None);
    }
}

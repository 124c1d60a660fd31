#!/usr/bin/env python3
"""Writes the sample HL7 v2 messages under samples/ (run from the repository root).

Every message is fictional: names, addresses and phone numbers are invented
(Ofcom drama ranges 020 7946 0xxx and 07700 900xxx), and every NHS number is
from the 999 test range with a valid modulus-11 check digit (asserted below),
except the one in tests/bad-input/nhs_number_bad_checksum.hl7, which is
deliberately wrong.

Segments end with CR, as senders send them, except adt_a08_lf_endings.hl7.
The ISO-8859-1 sample is written as real latin-1 bytes.

    python3 tests/python/make_samples.py
"""

import base64
import os
import random
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SAMPLES = os.path.join(ROOT, "samples")
# Deliberately broken inputs live outside samples/, so that `junction send samples/`
# gets AA for every file it sends.
BAD_INPUT = os.path.join(ROOT, "tests", "bad-input")


def nhs_check_digit(first9: str):
    """Modulus 11 check digit per the NHS Data Dictionary, None when 10 (invalid)."""
    total = sum(int(d) * w for d, w in zip(first9, range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def nhs_valid(number: str) -> bool:
    if len(number) != 10 or not number.isdigit():
        return False
    check = nhs_check_digit(number[:9])
    return check is not None and check == int(number[9])


def seg(name, fields):
    """A segment from {field number: value}; missing fields are empty."""
    last = max(fields) if fields else 0
    parts = [name] + [fields.get(i, "") for i in range(1, last + 1)]
    return "|".join(parts)


def msh(sending_app, sending_fac, when, msg_type, control_id, version, extra=None):
    """MSH; field numbers as in the standard (MSH-3 is the sending application)."""
    fields = {
        3: sending_app,
        4: sending_fac,
        5: "JUNCTION",
        6: "LCR",
        7: when,
        9: msg_type,
        10: control_id,
        11: "P",
        12: version,
    }
    if extra:
        fields.update(extra)
    last = max(fields)
    # MSH-1 is the field separator itself, MSH-2 the encoding characters.
    parts = ["MSH", "^~\\&"] + [fields.get(i, "") for i in range(3, last + 1)]
    return "|".join(parts)


def message(segments, ending="\r"):
    return ending.join(segments) + ending


# ---------------------------------------------------------------- patients

NHS = {
    "smith": "9990000018",
    "okonkwo": "9990012385",
    "sharma": "9990024758",
    "wright": "9990037124",
    "oneil": "9990049491",
    "kowalski": "9990061866",
    "evans": "9990074232",
    "begum": "9990086605",
    "osuilleabhain": "9990111340",
    "hughes": "9990123713",
    "lewis": "9990136084",
    "ahmed": "9990149003",
}
for who, number in NHS.items():
    assert nhs_valid(number), (who, number)

BAD_NHS = "9990160822"  # the valid check digit for 999016082 is 1
assert not nhs_valid(BAD_NHS) and nhs_check_digit(BAD_NHS[:9]) is not None

GP_PRIMROSE = "PRIMROSE HILL SURGERY^^F84003^^^^^^^F84003"
GP_PRIMROSE_24 = "PRIMROSE HILL SURGERY^^F84003"
GP_DR_OKAFOR = "G8234567^OKAFOR^CHIDI^^^DR"
CONS_PATEL = "C4512345^PATEL^ANJALI^^^DR"
CONS_MORGAN = "C3398811^MORGAN^HELEN^^^DR"
CONS_ABARA = "C6120934^ABARA^EMEKA^^^MR"

RFH_7N = "7N^SIDE ROOM 2^BED 12^RAL01^^^ROYAL FREE HOSPITAL^7^WARD 7 NORTH"


def pid_smith(version_25=True, address=None, phone=None):
    return seg("PID", {
        1: "1",
        3: f"{NHS['smith']}^^^NHS^NH~RAL1234567^^^RAL^MR",
        5: "SMITH^MARGARET^ANNE^^MRS^^L",
        7: "19480312",
        8: "F",
        11: address or "FLAT 4^12 ACACIA AVENUE^LONDON^^NW3 2QG^GBR^H",
        13: phone or "020 7946 0123^PRN^PH~07700 900123^PRN^CP",
        15: "en^English^ISO639",
        16: "W^Widowed",
        22: "A^White - British^NHSETH",
        32: "NSTS01" if version_25 else "",
    })


# ---------------------------------------------------------------- messages

def adt_a01():
    return message([
        msh("PAS", "RAL01", "20261120143512", "ADT^A01^ADT_A01", "RAL20261120143512001", "2.4",
            {17: "GBR"}),
        seg("EVN", {1: "A01", 2: "20261120143500", 5: "AB1234^BAKER^ANN^^^MS", 6: "20261120142000"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['smith']}^^^NHS^NH~RAL1234567^^^RAL^MR",
            5: "SMITH^MARGARET^ANNE^^MRS^^L",
            7: "19480312",
            8: "F",
            11: "FLAT 4^12 ACACIA AVENUE^LONDON^^NW3 2QG^GBR^H",
            13: "020 7946 0123^PRN^PH~07700 900123^PRN^CP",
            15: "en^English^ISO639",
            16: "W^Widowed",
            22: "A^White - British^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: GP_PRIMROSE_24, 4: GP_DR_OKAFOR}),
        seg("NK1", {
            1: "1",
            2: "SMITH^PAUL^^^MR",
            3: "SON^Son^HL70063",
            4: "27 ELM GROVE^^WATFORD^HERTFORDSHIRE^WD17 4PL^GBR^H",
            5: "07700 900456^PRN^CP",
            7: "NOK^Next of kin^HL70131",
        }),
        seg("PV1", {
            1: "1",
            2: "I",
            3: RFH_7N,
            4: "21",
            7: CONS_PATEL,
            10: "320",
            14: "19",
            17: CONS_PATEL,
            18: "01",
            19: "V2026112001^^^RAL^VN",
            39: "RAL01",
            44: "20261120142000",
        }),
        seg("PV2", {3: "^Chest pain"}),
        seg("DG1", {1: "1", 3: "R07.4^Chest pain, unspecified^I10", 5: "20261120142000", 6: "W"}),
        seg("AL1", {1: "1", 2: "DA^Drug allergy^HL70127", 3: "PENICILLIN^Penicillin^L",
                    4: "SV^Severe^HL70128", 5: "Anaphylaxis", 6: "19820601"}),
        seg("AL1", {1: "2", 2: "FA^Food allergy^HL70127", 3: "PEANUT^Peanut^L",
                    4: "MO^Moderate^HL70128", 5: "Urticaria"}),
        seg("ZPI", {1: "1", 2: "Y", 3: "LARGE PRINT LETTERS", 4: "20261120"}),
    ])


def adt_a08(ending="\r", control_id="RAL20261121091500044", when="20261121091500"):
    return message([
        msh("PAS", "RAL01", when, "ADT^A08^ADT_A01", control_id, "2.4", {17: "GBR"}),
        seg("EVN", {1: "A08", 2: when[:12] + "00", 5: "AB1234^BAKER^ANN^^^MS"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['smith']}^^^NHS^NH~RAL1234567^^^RAL^MR",
            5: "SMITH^MARGARET^ANNE^^MRS^^L",
            7: "19480312",
            8: "F",
            11: "3 BIRCH COURT^HEATH LANE^LONDON^^NW3 7RX^GBR^H",
            13: "020 7946 0123^PRN^PH~07700 900123^PRN^CP~^NET^Internet^m.smith@example.com",
            15: "en^English^ISO639",
            16: "W^Widowed",
            22: "A^White - British^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: GP_PRIMROSE_24, 4: GP_DR_OKAFOR}),
        seg("PV1", {
            1: "1",
            2: "I",
            3: RFH_7N,
            7: CONS_PATEL,
            10: "320",
            19: "V2026112001^^^RAL^VN",
            44: "20261120142000",
        }),
    ], ending)


def adt_a02():
    return message([
        msh("PAS", "RAL01", "20261120221045", "ADT^A02^ADT_A02", "RAL20261120221045007", "2.4",
            {17: "GBR"}),
        seg("EVN", {1: "A02", 2: "20261120221000", 6: "20261120220500"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['sharma']}^^^NHS^NH~RAL2345678^^^RAL^MR",
            5: "SHARMA^PRIYA^^^MS^^L",
            7: "19910817",
            8: "F",
            11: "58 CASTLE ROAD^^LONDON^^NW1 8SU^GBR^H",
            13: "07700 900781^PRN^CP",
            22: "H^Asian or Asian British - Indian^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: "CASTLE ROAD MEDICAL CENTRE^^F83012", 4: "G3456712^HUSSAIN^AMINA^^^DR"}),
        seg("PV1", {
            1: "1",
            2: "I",
            3: "ITU^^BED 3^RAL01^^^ROYAL FREE HOSPITAL^3^INTENSIVE CARE UNIT",
            6: "AMU^^BED 9^RAL01^^^ROYAL FREE HOSPITAL^1^ACUTE MEDICAL UNIT",
            7: CONS_MORGAN,
            10: "192",
            19: "V2026111903^^^RAL^VN",
            44: "20261119180000",
        }),
    ])


def adt_a03():
    # A summer discharge: local times are BST (UTC+1).
    return message([
        msh("EPR", "RRV", "20260714163204", "ADT^A03", "UCLH-0714-88213", "2.3"),
        seg("EVN", {1: "A03", 2: "20260714163200"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['okonkwo']}^^^NHS^NH~MRN0455871^^^RRV^MR",
            5: "OKONKWO^DAVID^CHUKWUEMEKA^^MR",
            7: "19650203",
            8: "M",
            11: "112 GOWER STREET^^LONDON^^WC1E 6BT^GBR^H",
            13: "020 7946 0871^PRN^PH",
            22: "N^Black or Black British - African^NHSETH",
        }),
        seg("PD1", {3: "GOWER STREET PRACTICE^^F83004", 4: "G7102938^LIM^WEI^^^DR"}),
        seg("PV1", {
            1: "1",
            2: "I",
            3: "T12N^^BED 4^RRV03^^^UNIVERSITY COLLEGE HOSPITAL^12^WARD T12 NORTH",
            7: CONS_ABARA,
            10: "100",
            19: "UC88213^^^RRV^VN",
            36: "01^Discharged on clinical advice",
            37: "19^Usual place of residence",
            44: "20260710091500",
            45: "20260714160000",
        }),
        seg("DG1", {1: "1", 3: "K35.8^Acute appendicitis, other and unspecified^I10",
                    5: "20260710120000", 6: "F"}),
        seg("DG1", {1: "2", 3: "E11.9^Type 2 diabetes mellitus without complications^I10",
                    6: "F"}),
    ])


def adt_a13():
    return message([
        msh("EPR", "RRV", "20260714171522", "ADT^A13", "UCLH-0714-88240", "2.3"),
        seg("EVN", {1: "A13", 2: "20260714171500"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['okonkwo']}^^^NHS^NH~MRN0455871^^^RRV^MR",
            5: "OKONKWO^DAVID^CHUKWUEMEKA^^MR",
            7: "19650203",
            8: "M",
            11: "112 GOWER STREET^^LONDON^^WC1E 6BT^GBR^H",
        }),
        seg("PV1", {
            1: "1",
            2: "I",
            3: "T12N^^BED 4^RRV03^^^UNIVERSITY COLLEGE HOSPITAL^12^WARD T12 NORTH",
            7: CONS_ABARA,
            10: "100",
            19: "UC88213^^^RRV^VN",
            44: "20260710091500",
        }),
    ])


def adt_a04():
    # Outpatient registration; the sender asks for enhanced acknowledgement. Three
    # OBX after the PV1 (height, weight, smoking status).
    return message([
        msh("CERNER", "RQX^RQX^ODS", "20261118101533", "ADT^A04^ADT_A01", "HOM000481516", "2.5",
            {15: "AL", 16: "NE", 17: "GBR"}),
        seg("EVN", {2: "20261118101530", 6: "20261118101000"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['wright']}^^^NHS^NH~HOM3318842^^^RQX^MR",
            5: "WRIGHT^THOMAS^JAMES^^MR^^L",
            7: "20120905",
            8: "M",
            11: "22 MARE STREET^^LONDON^^E8 1HY^GBR^H",
            13: "020 7946 0552^PRN^PH",
            22: "C^White - Any other White background^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: "MARE STREET SURGERY^^F84017^^^^^^^F84017", 4: "G4433221^ADEYEMI^FOLA^^^DR"}),
        seg("NK1", {
            1: "1",
            2: "WRIGHT^SARAH^^^MRS",
            3: "MTH^Mother^HL70063",
            5: "07700 900912^PRN^CP",
            7: "NOK^Next of kin^HL70131",
        }),
        seg("PV1", {
            1: "1",
            2: "O",
            3: "PAEDOPD^ROOM 4^^RQX01^^^HOMERTON UNIVERSITY HOSPITAL^^PAEDIATRIC OUTPATIENTS",
            7: "C5566778^OSEI^KWAME^^^DR",
            10: "420",
            19: "OP20261118-0042^^^RQX^VN",
            44: "20261118101000",
        }),
        # measurements taken at the clinic, as a PAS sends them after PV1: NM with
        # UCUM units, a CE answer
        seg("OBX", {1: "1", 2: "NM", 3: "50373000^Body height^SCT", 5: "141",
                    6: "cm^centimetre^UCUM", 11: "F", 14: "20261118100500"}),
        seg("OBX", {1: "2", 2: "NM", 3: "27113001^Body weight^SCT", 5: "33.4",
                    6: "kg^kilogram^UCUM", 11: "F", 14: "20261118100500"}),
        seg("OBX", {1: "3", 2: "CE", 3: "SMOK^Smoking status^RQX",
                    5: "266919005^Never smoked tobacco^SCT", 11: "F"}),
    ])


def adt_a05():
    # Pre-admission with escape sequences in names: the clerk typed "ROSE^MARY"
    # and the next of kin is "MR & MRS O'NEIL".
    return message([
        msh("PAS", "RAL01", "20261119110245", "ADT^A05^ADT_A05", "RAL20261119110245019", "2.5.1",
            {17: "GBR"}),
        seg("EVN", {2: "20261119110240", 6: "20261119110000"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['oneil']}^^^NHS^NH~RAL3456789^^^RAL^MR",
            5: "O'NEIL^ROSE\\S\\MARY^^^MRS^^L",
            7: "19570422",
            8: "F",
            11: "THE OLD FORGE^7 BRIDGE END^ST ALBANS^HERTFORDSHIRE^AL1 4RP^GBR^H",
            13: "01727 946001^PRN^PH",
            22: "B^White - Irish^NHSETH",
            32: "NSTS02",
        }),
        seg("PD1", {3: "BRIDGE END SURGERY \\T\\ DISPENSARY^^E82061^^^^^^^E82061",
                    4: "G9988771^REID^ALASTAIR^^^DR"}),
        seg("NK1", {
            1: "1",
            2: "O'NEIL^MR \\T\\ MRS",
            3: "CHD^Child^HL70063",
            4: "14 VERULAM ROAD^^ST ALBANS^HERTFORDSHIRE^AL3 4DH^GBR^H",
            5: "07700 900334^PRN^CP",
            7: "NOK^Next of kin^HL70131",
        }),
        seg("PV1", {
            1: "1",
            2: "P",
            3: "DSU^^^RAL01^^^ROYAL FREE HOSPITAL^^DAY SURGERY UNIT",
            4: "11",
            7: CONS_ABARA,
            10: "110",
            19: "V2026120301^^^RAL^VN",
        }),
        seg("PV2", {3: "^Right total knee replacement", 8: "20261203073000"}),
        seg("DG1", {1: "1", 3: "M17.1^Other primary gonarthrosis^I10", 6: "A"}),
    ])


def adt_a11():
    # Cancels the A01 admission of the same visit.
    return message([
        msh("PAS", "RAL01", "20261120150210", "ADT^A11^ADT_A09", "RAL20261120150210003", "2.4",
            {17: "GBR"}),
        seg("EVN", {1: "A11", 2: "20261120150200", 4: "O"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['smith']}^^^NHS^NH~RAL1234567^^^RAL^MR",
            5: "SMITH^MARGARET^ANNE^^MRS^^L",
            7: "19480312",
            8: "F",
        }),
        seg("PV1", {
            1: "1",
            2: "I",
            3: RFH_7N,
            7: CONS_PATEL,
            19: "V2026112001^^^RAL^VN",
            44: "20261120142000",
        }),
    ])


def adt_a28():
    # Person added by a community system that sends NHS gender codes (1/2/9), and
    # the NHS number's assigning authority as a whole HD (namespace, OID, ISO) with
    # no identifier type (CX.5).
    return message([
        msh("RIO", "RQX^RQX^ODS", "20261117084412", "ADT^A28^ADT_A05", "RIO-20261117-000193", "2.5"),
        seg("EVN", {2: "20261117084410"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['kowalski']}^^^NHS&2.16.840.1.113883.2.1.4.1&ISO~RIO1000193^^^RQX^MR",
            5: "KOWALSKI^ANNA^MARIA^^MS^^L~NOWAK^ANNA^^^MISS^^M",
            7: "19880130",
            8: "2",
            11: "FLAT 9 LOWER CLAPTON HOUSE^LOWER CLAPTON ROAD^LONDON^^E5 0NS^GBR^H",
            13: "07700 900667^PRN^CP~^NET^Internet^anna.k@example.org",
            15: "pl^Polish^ISO639",
            22: "C^White - Any other White background^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: "CLAPTON SURGERY^^F84063^^^^^^^F84063", 4: "G1122334^BROWN^ELEANOR^^^DR"}),
        seg("PV1", {1: "1", 2: "N"}),
    ])


def adt_a31():
    # v2.8, UTF-8, NHS gender code 1.
    return message([
        msh("PAS", "RAL01", "20261121083011+0000", "ADT^A31^ADT_A05", "RAL20261121083011052", "2.8",
            {17: "GBR", 18: "UNICODE UTF-8"}),
        seg("EVN", {2: "20261121083010+0000"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['evans']}^^^NHS^NH~RAL4567890^^^RAL^MR",
            5: "EVANS^RHYS^GWYN^^MR^^L",
            7: "19790611",
            8: "1",
            11: "Tŷ Siân^41 HAVERSTOCK HILL^LONDON^^NW3 2BP^GBR^H",
            13: "^PRN^CP^^^^^^^^^07700 900245",
            15: "cy^Welsh^ISO639",
            16: "M^Married",
            22: "A^White - British^NHSETH",
            32: "NSTS01",
        }),
        # v2.8 withdrew XON.3: the ODS code is only in XON.10 (organization identifier).
        seg("PD1", {3: "HAVERSTOCK HEALTH^^^^^^^^^F83673", 4: "G2233445^DAVIES^CERI^^^DR"}),
        seg("NK1", {
            1: "1",
            2: "EVANS^SIÂN^^^MRS",
            3: "SPO^Spouse^HL70063",
            5: "^PRN^CP^^^^^^^^^07700 900246",
            7: "NOK^Next of kin^HL70131",
        }),
        seg("PV1", {1: "1", 2: "N"}),
        seg("AL1", {1: "1", 2: "DA^Drug allergy^HL70127", 3: "CODEINE^Codeine^L",
                    4: "MI^Mild^HL70128", 5: "Nausea"}),
    ])


def adt_a40():
    # Merge: RAL7654321 (a duplicate registration) into RAL5678901.
    return message([
        msh("PAS", "RAL01", "20261121120000", "ADT^A40^ADT_A39", "RAL20261121120000077", "2.5.1",
            {17: "GBR"}),
        seg("EVN", {2: "20261121120000", 5: "DQ0042^HARRIS^JO^^^MR"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['begum']}^^^NHS^NH~RAL5678901^^^RAL^MR",
            5: "BEGUM^NASIMA^^^MRS^^L",
            7: "19720919",
            8: "F",
            11: "30 QUEEN'S CRESCENT^^LONDON^^NW5 4EP^GBR^H",
            22: "J^Asian or Asian British - Bangladeshi^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: "QUEEN'S CRESCENT PRACTICE^^F83019^^^^^^^F83019",
                    4: "G5566110^CHOWDHURY^RAHIM^^^DR"}),
        seg("MRG", {1: "RAL7654321^^^RAL^MR", 7: "BEGUM^NASIMA^^^MS^^L"}),
    ])


def oru_r01():
    # FBC, U&E, CRP and gentamicin level for the patient admitted in adt_a01.
    ordering = "C4512345^PATEL^ANJALI^^^DR"
    collected = "20261120151000"
    received = "20261120153207"
    reported = "20261120162544"

    def obr(set_id, service, section, filler):
        return seg("OBR", {
            1: set_id,
            2: "ICE9912345^ICE",
            3: f"{filler}^WINPATH",
            4: service,
            7: collected,
            14: received,
            16: ordering,
            22: reported,
            24: section,
            25: "F",
        })

    def nm(set_id, code, value, units, rng, flag=""):
        return seg("OBX", {1: set_id, 2: "NM", 3: code, 5: value, 6: units, 7: rng, 8: flag,
                           11: "F", 14: collected})

    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n" \
          b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    return message([
        msh("WINPATH", "RAL^RAL^ODS", reported + "+0000", "ORU^R01^ORU_R01", "WP26112016254400123",
            "2.5.1", {17: "GBR"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['smith']}^^^NHS^NH~RAL1234567^^^RAL^MR",
            5: "SMITH^MARGARET^ANNE^^MRS^^L",
            7: "19480312",
            8: "F",
            32: "NSTS01",
        }),
        seg("PV1", {1: "1", 2: "I", 3: RFH_7N, 7: CONS_PATEL, 19: "V2026112001^^^RAL^VN"}),
        seg("ORC", {1: "RE", 2: "ICE9912345^ICE", 3: "26H0123456^WINPATH", 5: "CM", 12: ordering}),
        obr("1", "FBC^Full blood count^WINPATH", "HAEM", "26H0123456"),
        seg("NTE", {1: "1", 2: "L", 3: "Sample received 22 minutes after collection."}),
        nm("1", "HB^Haemoglobin^WINPATH", "128", "g/L", "115-165", "N"),
        nm("2", "WBC^White cell count^WINPATH", "11.8", "10*9/L", "4.0-11.0", "H"),
        nm("3", "PLT^Platelets^WINPATH", "142", "10*9/L", "150-400", "L"),
        nm("4", "RBC^Red cell count^WINPATH", "4.21", "10*12/L", "3.80-5.80"),
        nm("5", "HCT^Haematocrit^WINPATH", "0.38", "L/L", "0.37-0.47"),
        nm("6", "MCV^Mean cell volume^WINPATH", "90.2", "fL", "80-100"),
        nm("7", "NEUT^Neutrophils^WINPATH", "8.9", "10*9/L", "2.0-7.5", "H"),
        nm("8", "LYMPH^Lymphocytes^WINPATH", "1.6", "10*9/L", "1.0-4.0"),
        seg("OBX", {1: "9", 2: "ST", 3: "FILM^Blood film comment^WINPATH",
                    5: "Neutrophilia. No blast cells seen.", 11: "F"}),
        seg("OBX", {1: "10", 2: "CWE", 3: "SICK^Sickle solubility screen^WINPATH",
                    5: "NEG^Negative^WINPATH", 11: "F"}),
        obr("2", "UE^Urea and electrolytes^WINPATH", "CHEM", "26C0456789"),
        nm("11", "NA^Sodium^WINPATH", "138", "mmol/L", "133-146"),
        nm("12", "K^Potassium^WINPATH", "5.6", "mmol/L", "3.5-5.3", "H"),
        seg("NTE", {1: "1", 2: "L", 3: "Slightly haemolysed sample \\T\\ delayed separation: "
                                       "potassium may be falsely raised."}),
        nm("13", "UREA^Urea^WINPATH", "9.1", "mmol/L", "2.5-7.8", "H"),
        nm("14", "CREA^Creatinine^WINPATH", "132", "umol/L", "45-84", "H"),
        nm("15", "EGFR^eGFR (CKD-EPI)^WINPATH", "35", "mL/min/1.73m2", ">90", "L"),
        seg("OBX", {1: "16", 2: "TX", 3: "UECOM^U\\T\\E comment^WINPATH",
                    5: "Reduced eGFR: compare with previous results.~"
                       "Please repeat U\\T\\E within 48 hours if clinically indicated.",
                    11: "F"}),
        seg("OBX", {1: "17", 2: "ED", 3: "RPT^Cumulative report^WINPATH",
                    5: "WINPATH^AP^PDF^Base64^" + base64.b64encode(pdf).decode("ascii"),
                    11: "F"}),
        obr("3", "CRP^C-reactive protein^WINPATH", "CHEM", "26C0456790"),
        seg("OBX", {1: "18", 2: "SN", 3: "CRP^C-reactive protein^WINPATH", 5: "<^5",
                    6: "mg/L", 7: "0-5", 8: "N", 11: "F", 14: collected}),
        obr("4", "GENT^Gentamicin level^WINPATH", "CHEM", "26C0456791"),
        nm("19", "GENT^Gentamicin (pre-dose)^WINPATH", "0.8", "mg/L", "<1.0"),
        seg("OBX", {1: "20", 2: "TS", 3: "GENTLD^Time of last dose^WINPATH",
                    5: "202611191800", 11: "F"}),
        seg("NTE", {1: "1", 2: "L", 3: "Pre-dose level acceptable for once-daily dosing."}),
    ])


def oru_r01_microbiology():
    # A v2.3 microbiology report: CE organism, TX report with formatting
    # escapes, a DT, no PV1 (optional segment missing).
    return message([
        msh("TELEPATH", "RRV", "20261119172201", "ORU^R01", "TP0031988412", "2.3"),
        seg("PID", {
            1: "1",
            3: f"{NHS['okonkwo']}^^^NHS^NH~MRN0455871^^^RRV^MR",
            5: "OKONKWO^DAVID^CHUKWUEMEKA^^MR",
            7: "19650203",
            8: "M",
        }),
        seg("OBR", {
            1: "1",
            2: "ICE7788123^ICE",
            3: "M26.0098812^TELEPATH",
            4: "MCS^Urine microscopy, culture and sensitivity^TELEPATH",
            7: "20261117090000",
            14: "20261117113000",
            15: "UR^Urine, midstream",
            16: "G7102938^LIM^WEI^^^DR",
            22: "20261119172000",
            24: "MICRO",
            25: "F",
        }),
        seg("OBX", {1: "1", 2: "CE", 3: "ORG^Organism^TELEPATH",
                    5: "ECOL^Escherichia coli^TELEPATH", 11: "F"}),
        seg("OBX", {1: "2", 2: "NM", 3: "WBCU^White cells (urine)^TELEPATH", 5: "150",
                    6: "10*6/L", 7: "0-10", 8: "H", 11: "F"}),
        seg("OBX", {1: "3", 2: "TX", 3: "SENS^Sensitivities^TELEPATH",
                    5: "Nitrofurantoin   S\\.br\\Trimethoprim    R\\.br\\Amoxicillin     R",
                    11: "F"}),
        seg("OBX", {1: "4", 2: "DT", 3: "SAMPDT^Date sample taken^TELEPATH", 5: "20261117",
                    11: "F"}),
        # two organisms in one result: OBX-5 repeats
        seg("OBX", {1: "5", 2: "CE", 3: "ORGX^Other organisms isolated^TELEPATH",
                    5: "ENTC^Enterococcus species^TELEPATH~PMIR^Proteus mirabilis^TELEPATH",
                    11: "F"}),
        # a time of day (TM): FHIR valueTime
        seg("OBX", {1: "7", 2: "TM", 3: "RCVTM^Time received in the laboratory^TELEPATH",
                    5: "1130", 11: "F"}),
        # the printed report as plain text: an ED with encoding A, line breaks escaped
        seg("OBX", {1: "6", 2: "ED", 3: "RPT^Laboratory report^TELEPATH",
                    5: "TELEPATH^TEXT^PLAIN^A^URINE MCS\\X0D\\\\X0A\\Significant bacteriuria.",
                    11: "F"}),
        seg("NTE", {1: "1", 2: "L", 3: "Significant bacteriuria. Treat according to sensitivities."}),
    ])


def oru_r01_order_notes():
    # A GP-requested liver profile and TSH for the A31 patient, v2.4, two order groups
    # each with its own ORC (ORC-5, ORC-9 transaction time, ORC-12 ordering GP). The
    # first OBR carries OBR-14 (specimen received), OBR-15 as a v2.4 SPS (specimen
    # source code in subcomponents) and OBR-16, an NTE directly after it (the
    # requester's clinical details: a note on the order, not on a result), and 4 OBX
    # with an NTE after one of them. The second order was placed by another GP of the
    # practice: its OBR has no OBR-16 (the ORC-12 of its own ORC says who) and no
    # specimen fields (so no Specimen).
    gp = "G2233445^DAVIES^CERI^^^DR"
    gp2 = "G2233452^PRICE^OWAIN^^^DR"
    collected = "20261121093000"
    reported = "20261122101500"

    def nm(set_id, code, value, units, rng, flag=""):
        return seg("OBX", {1: set_id, 2: "NM", 3: code, 5: value, 6: units, 7: rng, 8: flag,
                           11: "F", 14: collected})

    return message([
        msh("WINPATH", "RAL", "20261122101530", "ORU^R01^ORU_R01", "WP26112210153000210", "2.4",
            {17: "GBR"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['evans']}^^^NHS^NH~RAL4567890^^^RAL^MR",
            5: "EVANS^RHYS^GWYN^^MR^^L",
            7: "19790611",
            8: "M",
        }),
        seg("ORC", {1: "RE", 2: "ICE5521907^ICE", 3: "26B0778812^WINPATH", 5: "CM",
                    9: "20261121091500", 12: gp}),
        seg("OBR", {
            1: "1",
            2: "ICE5521907^ICE",
            3: "26B0778812^WINPATH",
            4: "LFT^Liver function tests^WINPATH",
            7: collected,
            14: "20261121141200",
            15: "BLDV&Blood venous&HL70070",
            16: gp,
            22: reported,
            24: "CHEM",
            25: "F",
        }),
        seg("NTE", {1: "1", 2: "P", 3: "Clinical details: on atorvastatin 40 mg, ?drug-induced "
                                       "liver injury."}),
        nm("1", "ALT^Alanine transaminase^WINPATH", "86", "U/L", "0-40", "H"),
        seg("NTE", {1: "1", 2: "L", 3: "ALT raised: suggest repeat in 4 weeks."}),
        nm("2", "ALP^Alkaline phosphatase^WINPATH", "102", "U/L", "30-130"),
        nm("3", "BILI^Bilirubin^WINPATH", "11", "umol/L", "0-21"),
        # below the method's range: a comparator before the number, the range in
        # brackets, and a flag the interpretation table does not know
        nm("4", "GGT^Gamma GT^WINPATH", "<5", "U/L", "(0-38)", "*"),
        seg("ORC", {1: "RE", 2: "ICE5521911^ICE", 3: "26B0778813^WINPATH", 5: "CM",
                    9: "20261121091800", 12: gp2}),
        seg("OBR", {
            1: "2",
            2: "ICE5521911^ICE",
            3: "26B0778813^WINPATH",
            4: "TSH^Thyroid stimulating hormone^WINPATH",
            7: collected,
            22: reported,
            24: "CHEM",
            25: "F",
        }),
        nm("5", "TSH^Thyroid stimulating hormone^WINPATH", "2.1", "mU/L", "0.27-4.2"),
    ])


def oru_r01_orc_numbers():
    # A lab that puts the order numbers only in the ORC (OBR-2 and OBR-3 empty), v2.5.1:
    # two orders for the A02 patient, each opened by its own ORC (the second OBR followed
    # by a TQ1 with its priority, and its results by the SPM of its specimen). The ORC of
    # the second order comes after the first order's results, so it must not be read as
    # the first order's.
    collected = "20261122071500"
    reported = "20261122094000"
    return message([
        msh("TELEPATH", "RAL", "20261122094012", "ORU^R01^ORU_R01", "TP26112209401200077", "2.5.1",
            {17: "GBR"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['okonkwo']}^^^NHS^NH~RAL2345678^^^RAL^MR",
            5: "OKONKWO^CHIDI^^^MR^^L",
            7: "19821103",
            8: "M",
        }),
        seg("PV1", {1: "1", 2: "I", 19: "V2026112101^^^RAL^VN"}),
        seg("ORC", {1: "RE", 2: "EPR7700123^EPR", 3: "26T0045501^TELEPATH", 5: "CM",
                    9: "20261122070100"}),
        seg("OBR", {1: "1", 4: "COAG^Coagulation screen^TELEPATH", 7: collected, 22: reported,
                    24: "HAEM", 25: "F"}),
        seg("OBX", {1: "1", 2: "NM", 3: "INR^INR^TELEPATH", 5: "2.6", 7: "0.8-1.2", 8: "H",
                    11: "F"}),
        seg("OBX", {1: "2", 2: "NM", 3: "APTT^APTT^TELEPATH", 5: "31", 6: "s", 7: "25-36",
                    11: "F"}),
        seg("ORC", {1: "RE", 2: "EPR7700124^EPR", 3: "26T0045502^TELEPATH", 5: "CM",
                    9: "20261122070200"}),
        seg("OBR", {1: "2", 4: "CRP^C-reactive protein^TELEPATH", 7: collected, 22: reported,
                    24: "CHEM", 25: "F"}),
        seg("TQ1", {1: "1", 9: "R^Routine^HL70485"}),
        seg("OBX", {1: "1", 2: "NM", 3: "CRP^C-reactive protein^TELEPATH", 5: "48", 6: "mg/L",
                    7: "0-5", 8: "H", 11: "F"}),
        seg("SPM", {1: "1", 2: "EPR7700124-S1&EPR^26T0045502-1&TELEPATH",
                    4: "SER^Serum^HL70487", 17: "20261122071000", 18: "20261122080500"}),
    ])


def oru_r01_point_of_care():
    # A point-of-care analyser on a ward (blood gas), v2.3: results straight after the
    # PID and PV1, with no OBR (no order: the device was used at the bedside) and an
    # NTE after one of them. Such results still belong in the record: each OBX is an
    # Observation of the patient in the visit, with no report around it.
    taken = "20261122034500"
    return message([
        msh("RAPIDPOINT", "RAL01", "20261122034712", "ORU^R01", "RP2611220347120031", "2.3"),
        seg("PID", {
            1: "1",
            3: f"{NHS['hughes']}^^^NHS^NH~RAL7788990^^^RAL^MR",
            5: "HUGHES^GARETH^^^MR",
            7: "19530704",
            8: "M",
        }),
        seg("PV1", {1: "1", 2: "I", 3: "ITU^BED 4^^RAL01", 19: "V2026112177^^^RAL^VN"}),
        seg("OBX", {1: "1", 2: "NM", 3: "PH^pH^RAPIDPOINT", 5: "7.31", 7: "7.35-7.45", 8: "L",
                    11: "F", 14: taken}),
        seg("OBX", {1: "2", 2: "NM", 3: "PCO2^pCO2^RAPIDPOINT", 5: "6.9", 6: "kPa",
                    7: "4.7-6.0", 8: "H", 11: "F", 14: taken}),
        seg("OBX", {1: "3", 2: "NM", 3: "LAC^Lactate^RAPIDPOINT", 5: "3.4", 6: "mmol/L",
                    7: "0.5-2.2", 8: "H", 11: "F", 14: taken}),
        seg("NTE", {1: "1", 3: "Arterial sample, patient on 40% oxygen."}),
    ])


def oru_r01_device_report():
    # A lung-function (spirometry) system, v2.5, sending with no order: the FEV1 of
    # each of three blows in one repeating NM OBX-5, the best as its own result, and
    # the device's report as an ED PDF. With no OBR there is no DiagnosticReport to
    # hold the PDF: it must not be lost (a DocumentReference of the patient).
    tested = "20261122101500"
    pdf = b"%PDF-1.4\n% fictional spirometry report\n%%EOF\n"
    return message([
        msh("SPIRO", "RAL01", "20261122102003", "ORU^R01^ORU_R01", "SP2611221020030007", "2.5"),
        seg("PID", {
            1: "1",
            3: f"{NHS['ahmed']}^^^NHS^NH~RAL8811223^^^RAL^MR",
            5: "AHMED^YUSUF^^^MR",
            7: "19680912",
            8: "M",
        }),
        seg("PV1", {1: "1", 2: "O", 3: "RESP^CLINIC 2^^RAL01", 19: "V2026112290^^^RAL^VN"}),
        seg("OBX", {1: "1", 2: "NM", 3: "FEV1BLOWS^FEV1 per blow^SPIRO", 5: "2.91~2.87~2.95",
                    6: "L^litre^UCUM", 11: "F", 14: tested}),
        seg("OBX", {1: "2", 2: "NM", 3: "FEV1^FEV1 best^SPIRO", 5: "2.95",
                    6: "L^litre^UCUM", 7: "3.10-4.60", 8: "L", 11: "F", 14: tested}),
        seg("OBX", {1: "3", 2: "ED", 3: "SPIROPDF^Spirometry report^SPIRO",
                    5: "SPIRO^AP^PDF^Base64^" + base64.b64encode(pdf).decode("ascii"),
                    11: "F", 14: tested}),
    ])


def adt_a08_untraced_nhs_first():
    # An A08 from a PAS that sends the NHS-number slot first even when it is
    # empty (the patient was untraced on arrival) and the traced number after it;
    # and an admission note as three OBX lines of one code. The traced number must
    # be the Patient's NHS number, and each line its own Observation.
    return message([
        msh("PAS", "RAL01", "20261123103512", "ADT^A08^ADT_A01", "RAL20261123103512009", "2.3"),
        seg("EVN", {1: "A08", 2: "20261123103500"}),
        seg("PID", {
            1: "1",
            3: f"^^^NHS^NH~{NHS['lewis']}^^^NHS^NH~RAL5511223^^^RAL^MR",
            5: "LEWIS^GARETH^^^MR",
            7: "19591104",
            8: "M",
            32: "NSTS01",
        }),
        seg("PV1", {1: "1", 2: "I", 3: "7N^^^RAL01", 19: "V2026112305^^^RAL^VN",
                    44: "20261123090000"}),
        seg("OBX", {1: "1", 2: "ST", 3: "ADMNOTE^Admission note^L",
                    5: "Brought in by ambulance.", 11: "F"}),
        seg("OBX", {1: "2", 2: "ST", 3: "ADMNOTE^Admission note^L",
                    5: "On warfarin - check INR.", 11: "F"}),
        seg("OBX", {1: "3", 2: "ST", 3: "ADMNOTE^Admission note^L",
                    5: "DNACPR in place.", 11: "F"}),
    ])


def oru_r01_sn_forms():
    # A urinalysis from a v2.3 LIMS: SN results no Quantity can say (a dipstick
    # `2+`, `not equal to 5`, a decimal sent as `1 . 5`) and one it can (`<5`), and
    # the report's PDF cut short by the sender's size limit (not Base64 that
    # decodes: left out, with a warning, never an invalid Bundle).
    return message([
        msh("TELEPATH", "RRV", "20261123103512", "ORU^R01", "TP20261123001", "2.3"),
        seg("PID", {1: "1", 3: f"{NHS['hughes']}^^^NHS^NH~RRV3344556^^^RRV^MR",
                    5: "HUGHES^CARYS^^^MS", 7: "19811230", 8: "F"}),
        seg("OBR", {1: "1", 2: "ICE7712^ICE", 3: "TP7712^TELEPATH",
                    4: "URIN^Urinalysis^TELEPATH", 7: "20261123090000", 25: "F"}),
        seg("OBX", {1: "1", 2: "SN", 3: "PROT^Protein^TELEPATH", 5: "^2^+", 11: "F"}),
        seg("OBX", {1: "2", 2: "SN", 3: "NE^Not equal^TELEPATH", 5: "<>^5", 6: "mg/L", 11: "F"}),
        seg("OBX", {1: "3", 2: "SN", 3: "DEC^Decimal^TELEPATH", 5: "^1^.^5", 6: "mg/L", 11: "F"}),
        seg("OBX", {1: "4", 2: "SN", 3: "CRP^CRP^TELEPATH", 5: "<^5", 6: "mg/L", 11: "F"}),
        seg("OBX", {1: "5", 2: "ED", 3: "PDF^Report^TELEPATH",
                    5: "TELEPATH^AP^PDF^Base64^JVBERi0xLjQKJ", 11: "F"}),
    ])


def adt_a40_two_merges():
    # An A40 carrying two merges (ADT_A39's PATIENT group repeats: PID [PD1] MRG):
    # each PID with the MRG after it is one merge; neither may be lost.
    return message([
        msh("PAS", "RAL01", "20261123150000", "ADT^A40^ADT_A39", "RAL20261123150000091", "2.4"),
        seg("EVN", {1: "A40", 2: "20261123150000"}),
        seg("PID", {1: "1", 3: f"{NHS['evans']}^^^NHS^NH~RAL2233445^^^RAL^MR",
                    5: "EVANS^RHIANNON^^^MS^^L", 7: "19880612", 8: "F"}),
        seg("MRG", {1: "RAL9900112^^^RAL^MR", 7: "EVANS^RIANNON^^^MS^^L"}),
        seg("PID", {1: "2", 3: f"{NHS['ahmed']}^^^NHS^NH~RAL3344556^^^RAL^MR",
                    5: "AHMED^YUSUF^^^MR^^L", 7: "19470302", 8: "M"}),
        seg("PD1", {3: GP_PRIMROSE}),
        seg("MRG", {1: "RAL9900113^^^RAL^MR", 7: "AHMED^YUSEF^^^MR^^L"}),
    ])


def oru_r01_precision_and_text():
    # A v2.3 lab report as LIMS send it: decimals whose trailing zeros are the
    # method's precision (`1.10`, `0.090`, a range `0.80-1.20`), an NM that is not a
    # number (`1,234`) with its units, result times that do not read as times, and a
    # report of several text lines under one code with no set-id discipline.
    return message([
        msh("WINPATH", "RAL", "20261123111500", "ORU^R01", "WP20261123000017", "2.3"),
        seg("PID", {1: "1", 3: f"{NHS['kowalski']}^^^NHS^NH~RAL4455667^^^RAL^MR",
                    5: "KOWALSKI^PIOTR^^^MR", 7: "19660921", 8: "M"}),
        seg("OBR", {1: "1", 2: "ICE9001^ICE", 3: "WP9001^WINPATH",
                    4: "COAG^Coagulation^WINPATH", 7: "20261123080000", 22: "20261123111000",
                    25: "F"}),
        seg("OBX", {1: "1", 2: "NM", 3: "INR^INR^WINPATH", 5: "1.10", 7: "0.80-1.20", 11: "F"}),
        seg("OBX", {1: "2", 2: "NM", 3: "CREA^Creatinine^WINPATH", 5: "0.090", 6: "mmol/L",
                    7: "0.045-0.084", 8: "H", 11: "F"}),
        seg("OBX", {1: "3", 2: "NM", 3: "PLT^Platelets^WINPATH", 5: "1,234", 6: "10*9/L",
                    11: "F"}),
        seg("OBX", {1: "4", 2: "TS", 3: "COLL^Collected^WINPATH", 5: "20261123253000", 11: "F"}),
        seg("OBX", {1: "5", 2: "DT", 3: "LMP^Last period^WINPATH", 5: "2026-11-01", 11: "F"}),
        seg("OBX", {1: "6", 2: "TX", 3: "COMM^Comment^WINPATH", 5: "Sample haemolysed.",
                    11: "F"}),
        seg("OBX", {1: "6", 2: "TX", 3: "COMM^Comment^WINPATH", 5: "Repeat advised.",
                    11: "F"}),
    ])


def adt_a03_v23_diagnoses():
    # A discharge from a v2.3 PAS (iSOFT/Lorenzo shape): DG1-2 the coding method,
    # DG1-3 a bare code, DG1-4 the description (an ST, never a code); and a DG1
    # with a description only.
    return message([
        msh("PAS", "RAL01", "20261123160000", "ADT^A03", "RAL20261123160000102", "2.3"),
        seg("EVN", {1: "A03", 2: "20261123160000"}),
        seg("PID", {1: "1", 3: f"{NHS['oneil']}^^^NHS^NH~RAL1122334^^^RAL^MR",
                    5: "O'NEIL^SIOBHAN^^^MS", 7: "19790415", 8: "F"}),
        seg("PV1", {1: "1", 2: "I", 3: "10W^^BED 3^RAL01", 19: "V2026111977^^^RAL^VN",
                    44: "20261120101500", 45: "20261123153000"}),
        seg("DG1", {1: "1", 2: "I10", 3: "J18.9", 4: "Pneumonia, unspecified", 6: "F"}),
        seg("DG1", {1: "2", 4: "Community acquired pneumonia", 6: "W"}),
    ])


def oru_r01_shared_lab_number():
    # A Winpath-style v2.8 report: one lab number (OBR-3) for two test sets of one
    # sample (FBC and ESR, each its own report), coded v2.8 flags (CWE), an amended
    # result, a word where a number was due, SN titre and one-sided range, a PDF
    # with no encoding or subtype, formatted text with a form feed (page break).
    assert nhs_valid("9990000042")
    obr = ("OBR|{n}|{placer}^ICE|26H0000500^WINPATH|{code}|||20261123083000|||||||20261123090000|"
           "BLDV&Blood venous&HL70070|G8888888^PATEL^ANIL||||||20261123101000|||F")
    return message([
        "MSH|^~\\&|WINPATH|RAL01|JUNCTION|LCR|20261123101500||ORU^R01^ORU_R01|WP2611231015000007|P|2.8|||||GBR",
        "PID|1||9990000042^^^NHS^NH~RAL2233445^^^RAL^MR||OKAFOR^CHIDI||19710214|M^Male^HL70001",
        "PV1|1|O^Outpatient^HL70004|||||||||||||||||V2026112301^^^RAL^VN",
        "ORC|RE|ICE900111^ICE|26H0000500^WINPATH||CM",
        obr.format(n=1, placer="ICE900111", code="FBC^Full blood count^WINPATH"),
        "OBX|1|NM|HB^Haemoglobin^WINPATH||98|g/L^^UCUM|130-170|L^Low^HL70078|||F",
        "OBX|2|NM|PLT^Platelets^WINPATH||12|10*9/L^^UCUM|150-400|LL^Critical low^HL70078~A^Abnormal^HL70078|||F",
        "OBX|3|TX|COMM^Comment^WINPATH||Film reviewed.||||||F",
        "ORC|RE|ICE900112^ICE|26H0000500^WINPATH||CM",
        obr.format(n=2, placer="ICE900112", code="ESR^Erythrocyte sedimentation rate^WINPATH"),
        "OBX|1|NM|ESR^ESR^WINPATH||44|mm/h|1-20|H^High^HL70078|||A",
        "OBX|2|TX|COMM^Comment^WINPATH||ESR raised: repeat in 6 weeks.||||||F",
        "OBX|3|NM|CRP^CRP^WINPATH||TNP|mg/L|<5||||F",
        "OBX|4|SN|MYCO^Mycoplasma titre^WINPATH||<^1^:^10||||||F",
        "OBX|5|SN|RF^Rheumatoid factor^WINPATH||^10^-^|IU/mL|||||F",
        "OBX|6|ED|PDF^Printed report^WINPATH||WINPATH^AP^^^JVBERi0xLjQK||||||F",
        "OBX|7|FT|NOTE^Clinical note^WINPATH||HISTORY\\.ce\\Joint pain.\\.sp\\Page 1\x0cPage 2||||||F",
    ])


def oru_r01_radiology_report():
    # A radiology report as a RIS (CRIS shape, v2.4) sends it (section RAD, the
    # reporting radiologist in OBR-32 as an NDL): the report text in one
    # TX result whose repetitions are its lines, with blank lines between paragraphs
    # and an indented list; the radiologist's addendum in an NTE of two lines with a
    # blank one between.
    assert nhs_valid("9990000107")
    return message([
        "MSH|^~\\&|CRIS|RAL01|JUNCTION|LCR|20261124101500||ORU^R01|CRIS2611241015000003|P|2.4",
        "PID|1||9990000107^^^NHS^NH~RAL3344556^^^RAL^MR||EVANS^MAIR||19580630|F",
        "OBR|1|ICE700231^ICE|RAD0099123^CRIS|XCHES^XR Chest^NICIP|||20261124093000|||||||||"
        "C1234567^SHAH^RITA||||||20261124101000||RAD|F|||||||C7654321&PATEL&ASHA&&&DR",
        "OBX|1|TX|XCHES^XR Chest^NICIP||XR CHEST PA~~Clinical details: cough, 3 weeks.~~"
        "Findings:~  1. No focal consolidation.~  2. Heart size normal.~~"
        "Impression: normal chest radiograph.~||||||F",
        "NTE|1|L|Addendum: compared with 2024 film.~~No interval change.",
    ])


def oru_r01_micro_susceptibility():
    # A WinPath-style v2.5.1 urine culture as parent and child orders: the culture
    # (organism E. coli, sub-id 1, with its colony count), then the susceptibility
    # tests of that organism as a child OBR naming its parent result (OBR-26: the
    # organism result, its sub-id and text) and its parent order (OBR-29: placer^filler).
    assert nhs_valid("9990000093")
    return message([
        "MSH|^~\\&|WINPATH|RAL01|JUNCTION|LCR|20261124141500||ORU^R01^ORU_R01|WP2611241415000021|P|2.5.1",
        "PID|1||9990000093^^^NHS^NH~RAL5566778^^^RAL^MR||HUGHES^CERI||19840512|F",
        "ORC|RE|ICE880012^ICE|26M0004512^WINPATH||CM",
        "OBR|1|ICE880012^ICE|26M0004512^WINPATH|MCS^Urine culture^WINPATH|||20261123080000|||||||"
        "20261123093000|MSU&Mid-stream urine&HL70487|G8888888^PATEL^ANIL||||||20261124141000|||F",
        "OBX|1|CWE|ORG^Organism^WINPATH|1|112283007^Escherichia coli^SCT||||||F",
        "OBX|2|ST|CFU^Colony count^WINPATH|1|>100000|CFU/mL|||||F",
        "ORC|RE|ICE880012^ICE|26M0004512-S1^WINPATH||CM",
        "OBR|2|ICE880012^ICE|26M0004512-S1^WINPATH|SENS^Susceptibility^WINPATH|||20261123080000|||||||"
        "||G8888888^PATEL^ANIL||||||20261124141000|||F|ORG&Organism&WINPATH^1^Escherichia coli|||"
        "ICE880012&ICE^26M0004512&WINPATH",
        "OBX|1|CWE|AMOX^Amoxicillin^WINPATH|1|R^Resistant^HL70078||||||F",
        "OBX|2|CWE|NITR^Nitrofurantoin^WINPATH|1|S^Susceptible^HL70078||||||F",
        "OBX|3|SN|CIPM^Ciprofloxacin MIC^WINPATH|1|<=^0.25|mg/L|||||F",
    ])


def adt_a12_cancel_transfer():
    # An iPM cancel transfer (v2.4): PV1-3 is where the patient is again (the acute
    # medical unit), PV1-6 the ward the cancelled transfer named.
    assert nhs_valid("9990000077")
    return message([
        "MSH|^~\\&|IPM|RAJ|JUNCTION|LCR|20261124123000||ADT^A12^ADT_A12|IPM2611241230000212|P|2.4",
        "EVN|A12|20261124122900",
        "PID|1||9990000077^^^NHS^NH~R0012345^^^RAJ^MR||GREEN^ANNA^MARIA||19900303|F",
        "PV1|1|I|AMU^BAY 1^BED 1^RAJ|||WARD 7^BAY 2^BED 4^RAJ|||||||||||||IPM555^^^RAJ^VN"
        "|||||||||||||||||||||||||20261123100000",
    ])


def adt_a38_cancel_preadmit():
    # An Epic cancel pre-admission (v2.6): the planned visit (PV1-2 `P`) will not
    # happen.
    assert nhs_valid("9990000085")
    return message([
        "MSH|^~\\&|EPIC|RGT|JUNCTION|LCR|20261124170000||ADT^A38^ADT_A38|EP2611241700000002|P|2.6",
        "EVN|A38|20261124170000",
        "PID|1||E1000001^^^EPI^MR~9990000085^^^NHS^NH||KOWALSKI^LUKASZ^^^MR||19780909|M",
        "PV1|1|P|ADDENBROOKES^^^RGT||||||||||||||||EP555001^^^RGT^VN",
        "PV2||||||||20261210",
    ])


def adt_a08_v28_bare_mrn():
    # A v2.8 PAS: PID-8, PV1-2 and DG1-6 coded (CWE), an MRN sent bare (no CX.4 or
    # CX.5), no MSH-4 (optional), and an A08 for a pre-admission (PV1-2 `P^Preadmit`,
    # coded) expected in December (PV2-8): planned, not in progress.
    assert nhs_valid("9990000050")
    return message([
        "MSH|^~\\&|PAS|||LCR|20261123111500||ADT^A08^ADT_A01|PAS2611231115000001|P|2.8",
        "EVN||20261123111500",
        "PID|1||RQX900123~9990000050^^^NHS^NH||JONES^PETER||19800101|M^Male^HL70001",
        "PD1|||BRIDGE END SURGERY^^E82061",
        "PV1|1|P^Preadmit^HL70004|WARD 5^^^RAL01||||||||||||||||PRE7731^^^RAL^VN",
        "PV2||||||||20261203",
        "DG1|1||R07.4^Chest pain^I10||20261120|F^Final^HL70052",
    ])


def adt_a11_cancel_hwe_practice():
    # A cancelled admission of a patient registered with a Hertfordshire practice:
    # the neighbour that had the admission must get the cancellation too.
    assert nhs_valid("9990000069")
    return message([
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261123120000||ADT^A11^ADT_A09|PAS2611231200000002|P|2.4",
        "EVN|A11|20261123120000",
        "PID|1||9990000069^^^NHS^NH~RAL5566778^^^RAL^MR||WARD^ELLEN||19620930|F",
        "PD1|||BRIDGE END SURGERY^^E82061",
        "PV1|1|I|WARD 7^BED 1^^RAL01||||||||||||||||V2026112302^^^RAL^VN",
    ])


def adt_a31_latin1():
    # An ISO-8859-1 sender: MSH-18 8859/1, written as latin-1 bytes.
    text = message([
        msh("PAS", "RAL01", "20261121140512", "ADT^A31^ADT_A05", "RAL20261121140512061", "2.4",
            {17: "GBR", 18: "8859/1"}),
        seg("EVN", {1: "A31", 2: "20261121140500"}),
        seg("PID", {
            1: "1",
            3: f"{NHS['osuilleabhain']}^^^NHS^NH~RAL6789012^^^RAL^MR",
            5: "O'SÚILLEABHÁIN^ZOË^ÁINE^^MS^^L",
            7: "19940228",
            8: "F",
            11: "2 CAFÉ ROW^^LONDON^^N1 9GU^GBR^H",
            13: "07700 900518^PRN^CP",
            22: "B^White - Irish^NHSETH",
            32: "NSTS01",
        }),
        seg("PD1", {3: GP_PRIMROSE_24, 4: GP_DR_OKAFOR}),
        seg("PV1", {1: "1", 2: "N"}),
    ])
    return text.encode("latin-1")


def batch_adt():
    # A nightly FHS/BHS batch of one patient's admission, transfer and discharge.
    pid = seg("PID", {
        1: "1",
        3: f"{NHS['hughes']}^^^NHS^NH~RAL7788990^^^RAL^MR",
        5: "HUGHES^GARETH^^^MR^^L",
        7: "19530704",
        8: "M",
        11: "9 PARLIAMENT HILL^^LONDON^^NW3 2TN^GBR^H",
        22: "A^White - British^NHSETH",
        32: "NSTS01",
    })
    pd1 = seg("PD1", {3: GP_PRIMROSE_24, 4: GP_DR_OKAFOR})
    visit = "V2026111501^^^RAL^VN"
    msgs = [
        [
            msh("PAS", "RAL01", "20261115093000", "ADT^A01^ADT_A01", "RALB20261115093000", "2.4"),
            seg("EVN", {1: "A01", 2: "20261115093000"}),
            pid, pd1,
            seg("PV1", {1: "1", 2: "I", 3: "AMU^^BED 2^RAL01^^^ROYAL FREE HOSPITAL^1^ACUTE MEDICAL UNIT",
                        7: CONS_MORGAN, 10: "300", 19: visit, 44: "20261115092000"}),
        ],
        [
            msh("PAS", "RAL01", "20261116111500", "ADT^A02^ADT_A02", "RALB20261116111500", "2.4"),
            seg("EVN", {1: "A02", 2: "20261116111500"}),
            pid, pd1,
            seg("PV1", {1: "1", 2: "I", 3: "10W^^BED 6^RAL01^^^ROYAL FREE HOSPITAL^10^WARD 10 WEST",
                        6: "AMU^^BED 2^RAL01^^^ROYAL FREE HOSPITAL^1^ACUTE MEDICAL UNIT",
                        7: CONS_MORGAN, 10: "300", 19: visit, 44: "20261115092000"}),
        ],
        [
            msh("PAS", "RAL01", "20261119143000", "ADT^A03^ADT_A03", "RALB20261119143000", "2.4"),
            seg("EVN", {1: "A03", 2: "20261119143000"}),
            pid, pd1,
            seg("PV1", {1: "1", 2: "I", 3: "10W^^BED 6^RAL01^^^ROYAL FREE HOSPITAL^10^WARD 10 WEST",
                        7: CONS_MORGAN, 10: "300", 19: visit,
                        36: "01^Discharged on clinical advice",
                        44: "20261115092000", 45: "20261119140000"}),
            seg("DG1", {1: "1", 3: "J18.9^Pneumonia, unspecified^I10", 6: "F"}),
        ],
    ]
    segments = [
        "FHS|^~\\&|PAS|RAL01|JUNCTION|LCR|20261120020000||ADT20261120.DAT|nightly ADT extract|F20261120",
        "BHS|^~\\&|PAS|RAL01|JUNCTION|LCR|20261120020000||||B20261120",
    ]
    for m in msgs:
        segments.extend(m)
    segments += ["BTS|3", "FTS|1"]
    return message(segments)


def bad_no_msh():
    return message([
        seg("EVN", {1: "A01", 2: "20261120143500"}),
        seg("PID", {1: "1", 3: f"{NHS['smith']}^^^NHS^NH", 5: "SMITH^MARGARET", 7: "19480312",
                    8: "F"}),
        seg("PV1", {1: "1", 2: "I"}),
    ])


def bad_empty_msh9():
    return message([
        msh("PAS", "RAL01", "20261120143512", "", "RALBAD0000000002", "2.4"),
        seg("EVN", {1: "A01", 2: "20261120143500"}),
        seg("PID", {1: "1", 3: f"{NHS['smith']}^^^NHS^NH", 5: "SMITH^MARGARET", 7: "19480312",
                    8: "F"}),
    ])


def bad_nhs_checksum():
    return message([
        msh("PAS", "RAL01", "20261122081500", "ADT^A04^ADT_A01", "RALBAD0000000004", "2.4",
            {17: "GBR"}),
        seg("EVN", {1: "A04", 2: "20261122081500"}),
        seg("PID", {
            1: "1",
            3: f"{BAD_NHS}^^^NHS^NH~RAL8899001^^^RAL^MR",
            5: "PATTERSON^LUKE^^^MR^^L",
            7: "19990101",
            8: "M",
            11: "5 FLASK WALK^^LONDON^^NW3 1HE^GBR^H",
            32: "NSTS02",
        }),
        seg("PV1", {1: "1", 2: "O", 3: "FRACTURE^^^RAL01^^^ROYAL FREE HOSPITAL^^FRACTURE CLINIC",
                    7: CONS_ABARA, 19: "OP20261122-0007^^^RAL^VN", 44: "20261122081000"}),
    ])


def bad_two_patients():
    # An ORU with the PATIENT_RESULT group repeated: two patients' results in one
    # message. Mapped, every result would be filed under the first patient; the
    # shipped mappings refuse it (`at_most_one = ["PID"]`).
    def patient(nhs, mrn, name, dob, sex, filler, code, value):
        return [
            seg("PID", {1: "1", 3: f"{nhs}^^^NHS^NH~{mrn}^^^RAL^MR", 5: name, 7: dob, 8: sex}),
            seg("OBR", {1: "1", 2: f"ICE{filler}^ICE", 3: f"26X{filler}^WINPATH",
                        4: f"{code}^{code}^WINPATH", 7: "20261122080000", 25: "F"}),
            seg("OBX", {1: "1", 2: "NM", 3: f"{code}^{code}^WINPATH", 5: value, 6: "mmol/L",
                        11: "F"}),
        ]
    return message([
        msh("WINPATH", "RAL", "20261122091500", "ORU^R01^ORU_R01", "WPBAD0000000005", "2.4",
            {17: "GBR"}),
        *patient(NHS["sharma"], "RAL3456789", "SHARMA^PRIYA^^^MS^^L", "19900214", "F",
                 "0000101", "GLU", "5.4"),
        *patient(NHS["wright"], "RAL4567801", "WRIGHT^DAVID^^^MR^^L", "19611130", "M",
                 "0000102", "GLU", "11.9"),
    ])


def main():
    files = {
        "adt_a01_admission.hl7": adt_a01().encode("ascii"),
        "adt_a02_transfer.hl7": adt_a02().encode("ascii"),
        "adt_a03_discharge.hl7": adt_a03().encode("ascii"),
        "adt_a04_outpatient_enhanced_ack.hl7": adt_a04().encode("ascii"),
        "adt_a05_preadmit_escapes.hl7": adt_a05().encode("ascii"),
        "adt_a08_update.hl7": adt_a08().encode("ascii"),
        "adt_a08_lf_endings.hl7": adt_a08("\n", "RAL20261121170245101", "20261121170245")
        .encode("ascii"),
        "adt_a11_cancel_admit.hl7": adt_a11().encode("ascii"),
        "adt_a13_cancel_discharge.hl7": adt_a13().encode("ascii"),
        "adt_a28_add_person.hl7": adt_a28().encode("ascii"),
        "adt_a31_update_person_v28_utf8.hl7": adt_a31().encode("utf-8"),
        "adt_a31_latin1.hl7": adt_a31_latin1(),
        "adt_a40_merge.hl7": adt_a40().encode("ascii"),
        "oru_r01_fbc_ue.hl7": oru_r01().encode("ascii"),
        "oru_r01_microbiology.hl7": oru_r01_microbiology().encode("ascii"),
        "oru_r01_order_notes.hl7": oru_r01_order_notes().encode("ascii"),
        "oru_r01_orc_numbers.hl7": oru_r01_orc_numbers().encode("ascii"),
        "oru_r01_point_of_care.hl7": oru_r01_point_of_care().encode("ascii"),
        "oru_r01_device_report.hl7": oru_r01_device_report().encode("ascii"),
        "adt_a08_untraced_nhs_first.hl7": adt_a08_untraced_nhs_first().encode("ascii"),
        "oru_r01_sn_forms.hl7": oru_r01_sn_forms().encode("ascii"),
        "adt_a40_two_merges.hl7": adt_a40_two_merges().encode("ascii"),
        "oru_r01_precision_and_text.hl7": oru_r01_precision_and_text().encode("ascii"),
        "adt_a03_v23_diagnoses.hl7": adt_a03_v23_diagnoses().encode("ascii"),
        "oru_r01_shared_lab_number.hl7": oru_r01_shared_lab_number().encode("ascii"),
        "adt_a08_v28_bare_mrn.hl7": adt_a08_v28_bare_mrn().encode("ascii"),
        "oru_r01_radiology_report.hl7": oru_r01_radiology_report().encode("ascii"),
        "adt_a12_cancel_transfer.hl7": adt_a12_cancel_transfer().encode("ascii"),
        "oru_r01_micro_susceptibility.hl7": oru_r01_micro_susceptibility().encode("ascii"),
        "adt_a38_cancel_preadmit.hl7": adt_a38_cancel_preadmit().encode("ascii"),
        "adt_a11_cancel_hwe_practice.hl7": adt_a11_cancel_hwe_practice().encode("ascii"),
        "batch_adt.hl7": batch_adt().encode("ascii"),
        "bad/no_msh.hl7": bad_no_msh().encode("ascii"),
        "bad/empty_msh9.hl7": bad_empty_msh9().encode("ascii"),
        "bad/nhs_number_bad_checksum.hl7": bad_nhs_checksum().encode("ascii"),
        "bad/oru_r01_two_patients.hl7": bad_two_patients().encode("ascii"),
    }
    rng = random.Random(20261122)
    files["bad/random_bytes.bin"] = bytes(rng.randrange(256) for _ in range(512))

    os.makedirs(BAD_INPUT, exist_ok=True)
    for name, data in files.items():
        if name.startswith("bad/"):
            path = os.path.join(BAD_INPUT, name[len("bad/"):])
        else:
            path = os.path.join(SAMPLES, name)
        with open(path, "wb") as f:
            f.write(data)
    print(f"wrote {len(files)} files under {os.path.normpath(SAMPLES)}", file=sys.stderr)


if __name__ == "__main__":
    main()

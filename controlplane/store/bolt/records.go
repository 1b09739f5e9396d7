package bolt

import (
	"encoding/binary"
	"fmt"
)

// Binary records of the hot path. Low-volume records (agents, tokens,
// policies) are JSON; results are protobuf (agentv1.CheckResult).

// counterRecord is the value in agent_counters: results stored (8 bytes)
// then the high-water seq (8 bytes), big-endian.
type counterRecord struct {
	stored    uint64
	highWater uint64
}

const counterRecordLen = 16

func (c counterRecord) encode() []byte {
	b := make([]byte, counterRecordLen)
	binary.BigEndian.PutUint64(b[0:], c.stored)
	binary.BigEndian.PutUint64(b[8:], c.highWater)
	return b
}

func decodeCounters(b []byte) (counterRecord, error) {
	if len(b) != counterRecordLen {
		return counterRecord{}, fmt.Errorf("corrupt agent counters: %d bytes, want %d", len(b), counterRecordLen)
	}
	return counterRecord{
		stored:    binary.BigEndian.Uint64(b[0:]),
		highWater: binary.BigEndian.Uint64(b[8:]),
	}, nil
}

// stateHeader starts every check_state value; the protobuf CheckResult of
// the latest result follows it. Layout (big-endian):
//
//	0     format (stateFormat)
//	1..4  status of the latest result (agentv1.CheckStatus)
//	5..12 since, Unix nanoseconds
//	13..20 streak
//	21..28 history length
//	29..  protobuf CheckResult
//
// The status is in the header so that ingest never decodes the protobuf.
type stateHeader struct {
	status     int32
	sinceNanos int64
	streak     uint64
	historyLen uint64
}

const (
	stateFormat    = 1
	stateHeaderLen = 29
)

func (h stateHeader) encode(result []byte) []byte {
	b := make([]byte, stateHeaderLen, stateHeaderLen+len(result))
	b[0] = stateFormat
	binary.BigEndian.PutUint32(b[1:], uint32(h.status))
	binary.BigEndian.PutUint64(b[5:], uint64(h.sinceNanos))
	binary.BigEndian.PutUint64(b[13:], h.streak)
	binary.BigEndian.PutUint64(b[21:], h.historyLen)
	return append(b, result...)
}

// decodeStateHeader returns the header and the protobuf bytes that follow
// (a sub-slice of b).
func decodeStateHeader(b []byte) (stateHeader, []byte, error) {
	if len(b) < stateHeaderLen {
		return stateHeader{}, nil, fmt.Errorf("corrupt check state: %d bytes, want at least %d", len(b), stateHeaderLen)
	}
	if b[0] != stateFormat {
		return stateHeader{}, nil, fmt.Errorf("corrupt check state: format %d, want %d", b[0], stateFormat)
	}
	return stateHeader{
		status:     int32(binary.BigEndian.Uint32(b[1:])),
		sinceNanos: int64(binary.BigEndian.Uint64(b[5:])),
		streak:     binary.BigEndian.Uint64(b[13:]),
		historyLen: binary.BigEndian.Uint64(b[21:]),
	}, b[stateHeaderLen:], nil
}

// checkRecord is the value in check_state (schema 2): a checkpoint of one
// check's in-memory state. Layout (big-endian):
//
//	0      format (checkFormat)
//	1..4   status of the latest result (agentv1.CheckStatus)
//	5..12  since, Unix nanoseconds
//	13..20 streak
//	21..28 count: results of the check ever stored (the latest's ordinal)
//	29..36 kept: results in its bounded history
//	37..44 latest: results_log index of the latest result
//
// A record covers every entry of its check up to latest; entries of the
// log after it are replayed at Open.
type checkRecord struct {
	status     int32
	sinceNanos int64
	streak     uint64
	count      uint64
	kept       uint64
	latest     uint64
}

const (
	checkFormat    = 2
	checkRecordLen = 45
)

func (r checkRecord) encode() []byte {
	b := make([]byte, checkRecordLen)
	b[0] = checkFormat
	binary.BigEndian.PutUint32(b[1:], uint32(r.status))
	binary.BigEndian.PutUint64(b[5:], uint64(r.sinceNanos))
	binary.BigEndian.PutUint64(b[13:], r.streak)
	binary.BigEndian.PutUint64(b[21:], r.count)
	binary.BigEndian.PutUint64(b[29:], r.kept)
	binary.BigEndian.PutUint64(b[37:], r.latest)
	return b
}

func decodeCheckRecord(b []byte) (checkRecord, error) {
	if len(b) != checkRecordLen {
		return checkRecord{}, fmt.Errorf("corrupt check state: %d bytes, want %d", len(b), checkRecordLen)
	}
	if b[0] != checkFormat {
		return checkRecord{}, fmt.Errorf("corrupt check state: format %d, want %d", b[0], checkFormat)
	}
	r := checkRecord{
		status:     int32(binary.BigEndian.Uint32(b[1:])),
		sinceNanos: int64(binary.BigEndian.Uint64(b[5:])),
		streak:     binary.BigEndian.Uint64(b[13:]),
		count:      binary.BigEndian.Uint64(b[21:]),
		kept:       binary.BigEndian.Uint64(b[29:]),
		latest:     binary.BigEndian.Uint64(b[37:]),
	}
	if r.kept > r.count || (r.kept > 0) != (r.latest > 0) {
		return checkRecord{}, fmt.Errorf("corrupt check state: %d kept of %d results, latest entry %d", r.kept, r.count, r.latest)
	}
	return r, nil
}

// logEntry is one result in results_log (or, moved, in history_cold).
// Layout: format byte (logFormat), then uvarint prev, uvarint ordinal,
// uvarint kept, varint at (Unix nanoseconds: the result's start, or its
// commit time), varint status, uvarint length + agent id, uvarint length +
// check id, and the protobuf CheckResult to the end.
//
// prev is the log index of the check's previous entry (0 for none): the
// chain that ListResults walks. ordinal is the entry's position among all
// results of its check (1 for the first) and kept the length of the
// check's bounded history once it was stored: an entry is in its check's
// history while count-kept < ordinal. Replaying an entry at Open restores
// the check's state from these fields alone.
type logEntry struct {
	prev    uint64
	ordinal uint64
	kept    uint64
	atNanos int64
	status  int32
	agentID []byte
	checkID []byte
	result  []byte
}

const logFormat = 1

func encodeLogEntry(prev, ordinal, kept uint64, atNanos int64, status int32, agentID, checkID string, result []byte) []byte {
	b := make([]byte, 0, 1+5*binary.MaxVarintLen64+2*binary.MaxVarintLen32+len(agentID)+len(checkID)+len(result))
	b = append(b, logFormat)
	b = binary.AppendUvarint(b, prev)
	b = binary.AppendUvarint(b, ordinal)
	b = binary.AppendUvarint(b, kept)
	b = binary.AppendVarint(b, atNanos)
	b = binary.AppendVarint(b, int64(status))
	b = binary.AppendUvarint(b, uint64(len(agentID)))
	b = append(b, agentID...)
	b = binary.AppendUvarint(b, uint64(len(checkID)))
	b = append(b, checkID...)
	return append(b, result...)
}

// decodeLogEntry decodes b; the byte slices of the entry are sub-slices of b.
func decodeLogEntry(b []byte) (logEntry, error) {
	var e logEntry
	if len(b) == 0 || b[0] != logFormat {
		return e, fmt.Errorf("corrupt results log entry: bad format byte")
	}
	p := 1
	uv := func(what string) (uint64, error) {
		v, n := binary.Uvarint(b[p:])
		if n <= 0 {
			return 0, fmt.Errorf("corrupt results log entry: bad %s", what)
		}
		p += n
		return v, nil
	}
	sv := func(what string) (int64, error) {
		v, n := binary.Varint(b[p:])
		if n <= 0 {
			return 0, fmt.Errorf("corrupt results log entry: bad %s", what)
		}
		p += n
		return v, nil
	}
	bs := func(what string) ([]byte, error) {
		l, err := uv(what + " length")
		if err != nil {
			return nil, err
		}
		if l == 0 || l > uint64(len(b)-p) {
			return nil, fmt.Errorf("corrupt results log entry: %s of %d bytes", what, l)
		}
		v := b[p : p+int(l)]
		p += int(l)
		return v, nil
	}
	var err error
	if e.prev, err = uv("prev"); err != nil {
		return e, err
	}
	if e.ordinal, err = uv("ordinal"); err != nil {
		return e, err
	}
	if e.kept, err = uv("kept"); err != nil {
		return e, err
	}
	if e.atNanos, err = sv("time"); err != nil {
		return e, err
	}
	st, err := sv("status")
	if err != nil {
		return e, err
	}
	if st != int64(int32(st)) {
		return e, fmt.Errorf("corrupt results log entry: status %d", st)
	}
	e.status = int32(st)
	if e.agentID, err = bs("agent id"); err != nil {
		return e, err
	}
	if e.checkID, err = bs("check id"); err != nil {
		return e, err
	}
	if e.ordinal == 0 || e.kept == 0 || e.kept > e.ordinal || (e.prev != 0) != (e.ordinal > 1) {
		return e, fmt.Errorf("corrupt results log entry: ordinal %d, kept %d, previous entry %d", e.ordinal, e.kept, e.prev)
	}
	e.result = b[p:]
	return e, nil
}

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

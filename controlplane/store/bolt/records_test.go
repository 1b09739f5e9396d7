package bolt

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func TestStateRecordRoundTrip(t *testing.T) {
	raw, err := proto.Marshal(result(7, "http", stCrit, t0))
	require.NoError(t, err)
	h := stateHeader{status: int32(stCrit), sinceNanos: t0.UnixNano(), streak: 3, historyLen: 42}
	got, rest, err := decodeStateHeader(h.encode(raw))
	require.NoError(t, err)
	require.Equal(t, h, got)
	require.Equal(t, raw, rest)

	c := counterRecord{stored: 5, highWater: 9}
	gotC, err := decodeCounters(c.encode())
	require.NoError(t, err)
	require.Equal(t, c, gotC)
	_, err = decodeCounters([]byte{1, 2, 3})
	require.ErrorContains(t, err, "corrupt agent counters")
}

func TestCheckRecordAndLogEntryRoundTrip(t *testing.T) {
	rec := checkRecord{status: int32(stCrit), sinceNanos: t0.UnixNano(), streak: 3, count: 9, kept: 5, latest: 77}
	got, err := decodeCheckRecord(rec.encode())
	require.NoError(t, err)
	require.Equal(t, rec, got)
	_, err = decodeCheckRecord(checkRecord{count: 1, kept: 2, latest: 1}.encode())
	require.ErrorContains(t, err, "2 kept of 1 results")

	raw, err := proto.Marshal(result(7, "http", stCrit, t0))
	require.NoError(t, err)
	e, err := decodeLogEntry(encodeLogEntry(76, 9, 5, t0.UnixNano(), int32(stCrit), "a1", "http", raw))
	require.NoError(t, err)
	require.Equal(t, logEntry{prev: 76, ordinal: 9, kept: 5, atNanos: t0.UnixNano(), status: int32(stCrit),
		agentID: []byte("a1"), checkID: []byte("http"), result: raw}, e)
	_, err = decodeLogEntry(encodeLogEntry(0, 2, 1, 0, 0, "a1", "http", raw))
	require.ErrorContains(t, err, "corrupt results log entry: ordinal 2, kept 1, previous entry 0")
	_, err = decodeLogEntry([]byte{logFormat, 1})
	require.ErrorContains(t, err, "corrupt results log entry: bad ordinal")
}

// FuzzDecodeRecords: check_state values and log entries come from the file;
// decoding any bytes must fail cleanly or round-trip.
func FuzzDecodeRecords(f *testing.F) {
	raw, _ := proto.Marshal(result(7, "http", stOK, t0))
	f.Add(checkRecord{status: 1, sinceNanos: 5, streak: 2, count: 3, kept: 3, latest: 4}.encode())
	f.Add(encodeLogEntry(3, 2, 2, 5, 1, "a1", "http", raw))
	f.Add([]byte{1, 2, 3})
	f.Add(make([]byte, checkRecordLen))
	f.Fuzz(func(t *testing.T, v []byte) {
		if rec, err := decodeCheckRecord(v); err == nil {
			require.Equal(t, v, rec.encode())
		}
		if e, err := decodeLogEntry(v); err == nil {
			again := encodeLogEntry(e.prev, e.ordinal, e.kept, e.atNanos, e.status, string(e.agentID), string(e.checkID), e.result)
			e2, err := decodeLogEntry(again)
			require.NoError(t, err)
			require.Equal(t, e, e2)
		}
	})
}

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

// FuzzDecodeState: check_state values come from the file; decoding any bytes
// must fail cleanly or round-trip.
func FuzzDecodeState(f *testing.F) {
	raw, _ := proto.Marshal(result(7, "http", stOK, t0))
	f.Add([]byte("a1\x00http"), stateHeader{status: 1, sinceNanos: 5, streak: 2, historyLen: 3}.encode(raw))
	f.Add([]byte("a1"), []byte{1, 2, 3})
	f.Add([]byte("a1\x00x"), make([]byte, stateHeaderLen))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		st, err := decodeState(k, v)
		if err != nil {
			return
		}
		h, _, err := decodeStateHeader(v)
		require.NoError(t, err)
		require.Equal(t, h.streak, st.Streak)
		require.Equal(t, h.historyLen, st.HistoryLen)
		again, err := proto.Marshal(st.Last)
		require.NoError(t, err)
		_, err = decodeState(k, h.encode(again))
		require.NoError(t, err)
	})
}

package api

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func okResult(seq uint64) *agentv1.CheckResult {
	return &agentv1.CheckResult{Seq: seq, CheckId: "local/disk", Status: agentv1.CheckStatus_CHECK_STATUS_OK}
}

func batchOf(rs ...*agentv1.CheckResult) *agentv1.ResultBatch {
	return &agentv1.ResultBatch{BatchId: 1, Results: rs}
}

func manyResults(n int) []*agentv1.CheckResult {
	rs := make([]*agentv1.CheckResult, n)
	for i := range rs {
		rs[i] = okResult(uint64(i + 1))
	}
	return rs
}

func manyMetrics(n int) map[string]float64 {
	m := make(map[string]float64, n)
	for i := range n {
		m[fmt.Sprintf("m%d", i)] = float64(i)
	}
	return m
}

func TestValidateBatch(t *testing.T) {
	with := func(f func(r *agentv1.CheckResult)) *agentv1.CheckResult {
		r := okResult(1)
		f(r)
		return r
	}
	tests := []struct {
		name    string
		batch   *agentv1.ResultBatch
		wantErr string // "" means valid
	}{
		{"one result", batchOf(okResult(1)), ""},
		{"increasing with gaps", batchOf(okResult(3), okResult(7), okResult(1<<63)), ""},
		{"max results", batchOf(manyResults(MaxBatchResults)...), ""},
		{"max check id", batchOf(with(func(r *agentv1.CheckResult) { r.CheckId = strings.Repeat("x", MaxCheckIDLen) })), ""},
		{"max output with slack", batchOf(with(func(r *agentv1.CheckResult) { r.Output = strings.Repeat("o", MaxOutputLen+64) })), ""},
		{"max metrics", batchOf(with(func(r *agentv1.CheckResult) { r.Metrics = manyMetrics(MaxMetrics) })), ""},
		{"every status but unspecified", batchOf(
			with(func(r *agentv1.CheckResult) { r.Status = agentv1.CheckStatus_CHECK_STATUS_OK }),
			with(func(r *agentv1.CheckResult) { r.Seq, r.Status = 2, agentv1.CheckStatus_CHECK_STATUS_WARNING }),
			with(func(r *agentv1.CheckResult) { r.Seq, r.Status = 3, agentv1.CheckStatus_CHECK_STATUS_CRITICAL }),
			with(func(r *agentv1.CheckResult) { r.Seq, r.Status = 4, agentv1.CheckStatus_CHECK_STATUS_UNKNOWN }),
		), ""},
		{"timestamps and duration", batchOf(with(func(r *agentv1.CheckResult) {
			r.StartedAt, r.Duration = timestamppb.Now(), durationpb.New(5)
		})), ""},

		{"nil batch", nil, "no results"},
		{"empty batch", &agentv1.ResultBatch{BatchId: 9}, "no results"},
		{"too many results", batchOf(manyResults(MaxBatchResults + 1)...), "5001 results, max 5000"},
		{"seq zero", batchOf(okResult(0)), "result 0: seq must be > 0"},
		{"nil result", batchOf(okResult(1), nil), "result 1: seq must be > 0"},
		{"seq repeated", batchOf(okResult(5), okResult(5)), "result 1: seq 5 not above the previous 5"},
		{"seq decreasing", batchOf(okResult(1), okResult(9), okResult(8)), "result 2: seq 8 not above the previous 9"},
		{"empty check id", batchOf(with(func(r *agentv1.CheckResult) { r.CheckId = "" })), "result 0: bad check id"},
		{"long check id", batchOf(with(func(r *agentv1.CheckResult) { r.CheckId = strings.Repeat("x", MaxCheckIDLen+1) })), "bad check id"},
		{"invalid utf-8 check id", batchOf(with(func(r *agentv1.CheckResult) { r.CheckId = "local/\xff" })), "bad check id"},
		{"output too long", batchOf(with(func(r *agentv1.CheckResult) { r.Output = strings.Repeat("o", MaxOutputLen+65) })), "output of 4161 bytes"},
		{"too many metrics", batchOf(with(func(r *agentv1.CheckResult) { r.Metrics = manyMetrics(MaxMetrics + 1) })), "65 metrics, max 64"},
		{"status unspecified", batchOf(with(func(r *agentv1.CheckResult) { r.Status = agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED })), "status unspecified"},
		{"error names the bad result", batchOf(okResult(1), okResult(2), with(func(r *agentv1.CheckResult) { r.Seq, r.CheckId = 3, "" })), "result 2:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateBatch(tc.batch)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestValidateLabels(t *testing.T) {
	many := func(n int) map[string]string {
		m := make(map[string]string, n)
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	tests := []struct {
		name    string
		labels  map[string]string
		wantErr string
	}{
		{"nil", nil, ""},
		{"empty", map[string]string{}, ""},
		{"typical", map[string]string{"role": "web", "zone": "eu-west-1a", "tend.dev/tier": "1"}, ""},
		{"key charset", map[string]string{"A9_b.c/d-e": "x"}, ""},
		{"63-char key", map[string]string{"k" + strings.Repeat("x", 62): "v"}, ""},
		{"empty value", map[string]string{"k": ""}, ""},
		{"253-byte value", map[string]string{"k": strings.Repeat("v", 253)}, ""},
		{"value with spaces and unicode", map[string]string{"k": "héllo wörld\t!"}, ""},
		{"64 labels", many(64), ""},

		{"65 labels", many(65), "too many labels: 65 (max 64)"},
		{"empty key", map[string]string{"": "v"}, `label key ""`},
		{"64-char key", map[string]string{"k" + strings.Repeat("x", 63): "v"}, "label key"},
		{"key starts with dash", map[string]string{"-k": "v"}, `label key "-k"`},
		{"key starts with dot", map[string]string{".k": "v"}, "label key"},
		{"key with space", map[string]string{"a b": "v"}, "label key"},
		{"key with colon", map[string]string{"a:b": "v"}, "label key"},
		{"key with newline", map[string]string{"a\n": "v"}, "label key"},
		{"non-ascii key", map[string]string{"rôle": "v"}, "label key"},
		{"254-byte value", map[string]string{"k": strings.Repeat("v", 254)}, "label k: value too long"},
		{"value with NUL", map[string]string{"k": "a\x00b"}, "control characters"},
		{"value with newline", map[string]string{"k": "a\nb"}, "control characters"},
		{"value with CR", map[string]string{"k": "a\rb"}, "control characters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateLabels(tc.labels)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func mustMarshal(f *testing.F, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzValidateBatch(f *testing.F) {
	seeds := []*agentv1.ResultBatch{
		{},
		batchOf(okResult(1)),
		batchOf(okResult(1), okResult(2), okResult(math.MaxUint64)),
		batchOf(okResult(2), okResult(1)),
		batchOf(okResult(0)),
		batchOf(&agentv1.CheckResult{Seq: 1, CheckId: strings.Repeat("x", MaxCheckIDLen+1), Status: 1}),
		batchOf(&agentv1.CheckResult{Seq: 1, CheckId: "c", Status: 99, Output: "out", Metrics: map[string]float64{"a": math.NaN(), "": math.Inf(-1)},
			StartedAt: &timestamppb.Timestamp{Seconds: math.MinInt64, Nanos: -1}, Duration: &durationpb.Duration{Seconds: math.MaxInt64}}),
		{BatchId: math.MaxUint64, OutboxDroppedTotal: 7, Results: manyResults(50)},
	}
	for _, s := range seeds {
		f.Add(mustMarshal(f, s))
	}
	f.Add([]byte{0x12, 0x00})             // one empty result
	f.Add([]byte{0x12, 0x02, 0x08, 0x01}) // seq 1, nothing else
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b agentv1.ResultBatch
		if err := proto.Unmarshal(data, &b); err != nil {
			t.Skip()
		}
		if err := ValidateBatch(&b); err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		rs := b.GetResults()
		require.NotEmpty(t, rs)
		require.LessOrEqual(t, len(rs), MaxBatchResults)
		var prev uint64
		for i, r := range rs {
			require.NotNil(t, r, "result %d", i)
			require.Greater(t, r.GetSeq(), prev, "result %d: seq must be > 0 and strictly increasing", i)
			prev = r.GetSeq()
			id := r.GetCheckId()
			require.NotEmpty(t, id, "result %d", i)
			require.LessOrEqual(t, len(id), MaxCheckIDLen, "result %d", i)
			require.True(t, utf8.ValidString(id), "result %d", i)
			require.LessOrEqual(t, len(r.GetOutput()), MaxOutputLen+64, "result %d", i)
			require.LessOrEqual(t, len(r.GetMetrics()), MaxMetrics, "result %d", i)
			require.NotEqual(t, agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED, r.GetStatus(), "result %d", i)
		}
	})
}

func FuzzConnectRequest(f *testing.F) {
	seeds := []*agentv1.ConnectRequest{
		{},
		{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
			Version: "1.0", Labels: map[string]string{"role": "web"}, Facts: map[string]string{"os": "linux"},
			LocalChecks: []*agentv1.CheckSpec{{Id: "local/x", Interval: durationpb.New(1e9),
				Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/true"}}}}},
			ChecksGeneration: 3, OutboxDroppedTotal: 1, OutboxPending: 2,
		}}},
		{Msg: &agentv1.ConnectRequest_Results{Results: batchOf(okResult(1), okResult(2))}},
		{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}},
		{Msg: &agentv1.ConnectRequest_TaskUpdate{TaskUpdate: &agentv1.TaskUpdate{}}},
	}
	for _, s := range seeds {
		f.Add(mustMarshal(f, s))
	}
	f.Add([]byte{0x0a, 0x80, 0x80, 0x80, 0x80, 0x10}) // length far past the end
	f.Add([]byte{0x0b})                               // start group
	f.Fuzz(func(t *testing.T, data []byte) {
		var m agentv1.ConnectRequest
		if err := proto.Unmarshal(data, &m); err != nil {
			return
		}
		// What the stream handler looks at must not panic either.
		_ = ValidateLabels(m.GetHello().GetLabels())
		if r := m.GetResults(); r != nil {
			_ = ValidateBatch(r)
		}
		// A message that decodes re-encodes stably.
		det := proto.MarshalOptions{Deterministic: true}
		b1, err := det.Marshal(&m)
		require.NoError(t, err)
		var again agentv1.ConnectRequest
		require.NoError(t, proto.Unmarshal(b1, &again))
		b2, err := det.Marshal(&again)
		require.NoError(t, err)
		require.Equal(t, b1, b2)
	})
}

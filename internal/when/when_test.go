package when

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		expr    string
		wantErr string // exact error, "" for valid
	}{
		{name: "empty", expr: ""},
		{name: "blank", expr: " \n\t"},
		{name: "status", expr: `result.status != "ok"`},
		{name: "metrics and labels", expr: `result.metrics.used_percent > 95 && labels.env == "prod"`},
		{name: "optional", expr: `result.metrics.?cpu.orValue(0.0) >= 90.0`},
		{name: "strings extension", expr: `result.output.lowerAscii().contains("out of memory")`},
		{name: "comprehension", expr: `result.metrics.exists(k, k.startsWith("err_") && result.metrics[k] > 0.0)`},
		{
			name: "syntax error", expr: `result.status ==`,
			wantErr: `invalid expression "result.status ==": 1:17: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}`,
		},
		{
			name: "misspelt field", expr: `result.stauts == "ok"`,
			wantErr: `invalid expression "result.stauts == \"ok\"": 1:7: undefined field 'stauts' (result has status, output, metrics)`,
		},
		{
			name: "unknown variable", expr: `metrics.cpu > 1.0`,
			wantErr: `invalid expression "metrics.cpu > 1.0": 1:1: undeclared reference to 'metrics' (variables: result, labels)`,
		},
		{
			name: "not a bool", expr: `result.metrics.cpu`,
			wantErr: `invalid expression "result.metrics.cpu": must be a bool (true when the result counts as failed), got double`,
		},
		{
			name: "double == int", expr: `result.metrics.cpu == 1`,
			wantErr: `invalid expression "result.metrics.cpu == 1": 1:20: found no matching overload for '_==_' applied to '(double, int)' (metrics are doubles: write 90.0, not 90)`,
		},
		{
			name: "label values are strings", expr: `labels.tier > 2`,
			wantErr: `invalid expression "labels.tier > 2": 1:13: found no matching overload for '_>_' applied to '(string, int)'`,
		},
		{
			name: "two errors on one line", expr: `result.a == "x" || result.b == "y"`,
			wantErr: `invalid expression "result.a == \"x\" || result.b == \"y\"": 1:7: undefined field 'a' (result has status, output, metrics); 1:26: undefined field 'b' (result has status, output, metrics)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.expr)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.wantErr)
		})
	}
}

func TestLimits(t *testing.T) {
	deep := strings.Repeat("(", MaxNesting+5) + "true" + strings.Repeat(")", MaxNesting+5)
	long := "true" + strings.Repeat(" && true", MaxExprLen/8)
	err := Validate(deep)
	require.EqualError(t, err, fmt.Sprintf("invalid expression %q: expression recursion limit exceeded: %d", deep, MaxNesting))
	err = Validate(long)
	require.ErrorContains(t, err, "invalid expression")
	require.ErrorContains(t, err, "expression code point size exceeds limit")
	require.ErrorContains(t, err, "…", "a long expression is shortened in the message")
	require.Less(t, len(err.Error()), 600)
	_, err = Compile("")
	require.ErrorContains(t, err, "empty expression")
}

func TestEval(t *testing.T) {
	out4k := strings.Repeat("line of output\n", 4096/15)
	many := map[string]float64{}
	for i := range 1000 {
		many[fmt.Sprintf("m%d", i)] = float64(i)
	}
	tests := []struct {
		name    string
		expr    string
		in      Input
		want    bool
		wantErr string
	}{
		{name: "status", expr: `result.status == "critical"`, in: Input{Status: "critical"}, want: true},
		{name: "metric int literal", expr: `result.metrics.x > 90`, in: Input{Metrics: map[string]float64{"x": 90.5}}, want: true},
		{name: "label", expr: `labels.role == "web"`, in: Input{Labels: map[string]string{"role": "web"}}, want: true},
		{name: "nil maps are empty", expr: `size(result.metrics) == 0 && size(labels) == 0`, in: Input{}, want: true},
		{name: "missing key", expr: `result.metrics.x > 1.0`, in: Input{}, wantErr: `when "result.metrics.x > 1.0": no such key: x`},
		{name: "regex over 4 KiB of output is within the cost limit", expr: `result.output.matches("(?m)^fatal: .*$")`, in: Input{Output: out4k}},
		{name: "lines of 4 KiB of output are within the cost limit", expr: `result.output.split("\n").exists(l, l.contains("fatal"))`, in: Input{Output: out4k}},
		{name: "one pass over 1000 metrics is within the cost limit", expr: `result.metrics.exists(k, result.metrics[k] > 5000.0)`, in: Input{Metrics: many}},
		{name: "nested passes are not", expr: `result.metrics.all(a, result.metrics.all(b, true))`, in: Input{Metrics: many}, wantErr: "cost limit exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.expr)
			require.NoError(t, err)
			require.Equal(t, tt.expr, p.String())
			got, err := p.Eval(context.Background(), tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.False(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestEvalInterrupted(t *testing.T) {
	many := map[string]float64{}
	for i := range 500 {
		many[fmt.Sprintf("m%d", i)] = float64(i)
	}
	p, err := Compile(`result.metrics.exists(k, result.metrics[k] < 0.0)`)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := p.Eval(ctx, Input{Metrics: many})
	require.ErrorContains(t, err, "interrupted")
	require.False(t, got)
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`result.status != "ok"`, `result.metrics.x > 1`, `labels.a == "b"`, `result.output.matches("a+")`,
		`[1,2].map(x, x * 2).size() > 0`, `((((true))))`, `result.metrics.?x.orValue(0.0) > 1.0`, "\x00", `"\u00ff" + 'a'`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		err := Validate(expr)
		if err == nil && strings.TrimSpace(expr) != "" {
			p, err := Compile(expr)
			require.NoError(t, err)
			_, _ = p.Eval(context.Background(), Input{Status: "critical", Output: expr, Metrics: map[string]float64{"x": 1}, Labels: map[string]string{"a": "b"}})
		}
	})
}

package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// echo is a test plugin with one action, "echo.say".
type echo struct {
	gotDeadline chan time.Duration
}

func (e *echo) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{Name: "echo", Version: "1", Actions: []*pluginv1.ActionInfo{
		{Name: "say", Params: []*pluginv1.ParamInfo{{Name: "text", Type: "string", Required: true}}},
	}}, nil
}

func (e *echo) parse(action string, params map[string]any) (string, bool, error) {
	if action != "echo.say" {
		return "", false, UnknownAction(action, "echo.say")
	}
	p := NewParams(params)
	text := p.String("text")
	fail := p.OptBool("fail", false)
	return text, fail, p.Err()
}

func (e *echo) Validate(_ context.Context, action string, params map[string]any) error {
	_, _, err := e.parse(action, params)
	return err
}

func (e *echo) Execute(ctx context.Context, req ExecuteRequest) (ExecuteResult, error) {
	text, fail, err := e.parse(req.Action, req.Params)
	if err != nil {
		return ExecuteResult{}, err
	}
	if e.gotDeadline != nil {
		dl, ok := ctx.Deadline()
		if !ok {
			e.gotDeadline <- -1
		} else {
			e.gotDeadline <- time.Until(dl)
		}
	}
	switch text {
	case "plain error":
		return ExecuteResult{}, errors.New("disk on fire")
	case "unavailable":
		return ExecuteResult{}, status.Error(codes.Unavailable, "backend down")
	case "binary":
		text = "bin\xffary"
	case "wait":
		<-ctx.Done()
		return ExecuteResult{}, ctx.Err()
	}
	return ExecuteResult{Success: !fail, Output: text + " (task " + req.TaskID + ")",
		Metrics: map[string]float64{"len": float64(len(text)), "nan": math.NaN(), "inf": math.Inf(1)}}, nil
}

func TestInProcessRoundTrip(t *testing.T) {
	ctx := context.Background()
	c := TestClient(t, &echo{})

	d, err := c.Describe(ctx)
	require.NoError(t, err)
	require.Equal(t, "echo", d.GetName())
	require.Equal(t, "say", d.GetActions()[0].GetName())

	require.NoError(t, c.Validate(ctx, "echo.say", map[string]any{"text": "hi"}))

	err = c.Validate(ctx, "echo.say", map[string]any{"text": 1.0, "loud": true})
	require.ErrorIs(t, err, ErrInvalidParams)
	require.Equal(t, "invalid params: param text: want a string, got number; param loud: unknown parameter (known: fail, text)", err.Error())

	err = c.Validate(ctx, "echo.shout", nil)
	require.ErrorIs(t, err, ErrUnknownAction)
	require.Contains(t, err.Error(), `unknown action "echo.shout" (this plugin serves: echo.say)`)

	res, err := c.Execute(ctx, ExecuteRequest{TaskID: "t-1", Action: "echo.say", Params: map[string]any{"text": "hello"}})
	require.NoError(t, err)
	require.True(t, res.Success)
	require.Equal(t, "hello (task t-1)", res.Output)
	require.Equal(t, map[string]float64{"len": 5}, res.Metrics, "non-finite metrics are dropped")

	res, err = c.Execute(ctx, ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "x", "fail": true}})
	require.NoError(t, err)
	require.False(t, res.Success)

	_, err = c.Execute(ctx, ExecuteRequest{Action: "echo.say", Params: map[string]any{}})
	require.ErrorIs(t, err, ErrInvalidParams)
}

func TestErrorsOverTheWire(t *testing.T) {
	ctx := context.Background()
	c := TestClient(t, &echo{})

	_, err := c.Execute(ctx, ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "plain error"}})
	require.Equal(t, codes.Unknown, status.Code(err))
	require.Contains(t, err.Error(), "disk on fire")

	// A plugin must never make the agent believe it crashed.
	_, err = c.Execute(ctx, ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "unavailable"}})
	require.Equal(t, codes.Unknown, status.Code(err))
	require.Contains(t, err.Error(), "backend down")

	// Params that cannot be encoded never leave the agent.
	_, err = c.Execute(ctx, ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": []string{"a"}}})
	require.ErrorIs(t, err, ErrInvalidParams)
}

func TestTimeoutBecomesDeadline(t *testing.T) {
	e := &echo{gotDeadline: make(chan time.Duration, 1)}
	c := TestClient(t, e)

	start := time.Now()
	_, err := c.Execute(context.Background(), ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "wait"}, Timeout: 300 * time.Millisecond})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "err: %v", err)
	require.Less(t, time.Since(start), 5*time.Second)
	left := <-e.gotDeadline
	require.NotEqual(t, time.Duration(-1), left, "the timeout is a deadline on the plugin's context")
	require.LessOrEqual(t, left, 300*time.Millisecond)

	// No timeout: no deadline.
	_, err = c.Execute(context.Background(), ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "x"}})
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), <-e.gotDeadline)
}

func TestServerRejectsBadTimeout(t *testing.T) {
	c := TestClient(t, &echo{})
	params, err := structpb.NewStruct(map[string]any{"text": "x"})
	require.NoError(t, err)
	_, err = c.RPC().Execute(context.Background(), &pluginv1.ExecuteRequest{Action: "echo.say", Params: params, Timeout: durationpb.New(-time.Second)})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestOutputIsCapped(t *testing.T) {
	c := TestClient(t, &echo{})
	long := strings.Repeat("é", 5000)
	res, err := c.Execute(context.Background(), ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": long}})
	require.NoError(t, err)
	require.LessOrEqual(t, len(res.Output), MaxOutput)
	require.True(t, utf8.ValidString(res.Output))
	require.True(t, strings.HasSuffix(res.Output, "…[truncated]"))

	// Output made of host data may be invalid UTF-8, which protobuf
	// refuses to send: the adapter repairs it.
	res, err = c.Execute(context.Background(), ExecuteRequest{Action: "echo.say", Params: map[string]any{"text": "binary"}})
	require.NoError(t, err)
	require.Equal(t, "bin\uFFFDary (task )", res.Output)
}

func TestCapOutput(t *testing.T) {
	require.Equal(t, "ok", CapOutput("ok"))
	require.Equal(t, "a\uFFFDb", CapOutput("a\xffb"))
	require.Equal(t, "line 1\n\tline 2\\x1b[2J\\x00\\x0d\\x7f\\u009b", CapOutput("line 1\n\tline 2\x1b[2J\x00\r\x7f\u009b"))
	exact := strings.Repeat("x", MaxOutput)
	require.Equal(t, exact, CapOutput(exact))
	for _, s := range []string{strings.Repeat("x", MaxOutput+1), strings.Repeat("日本", 2000), strings.Repeat("a\xff", 3000)} {
		got := CapOutput(s)
		require.LessOrEqual(t, len(got), MaxOutput)
		require.True(t, utf8.ValidString(got))
		require.True(t, strings.HasSuffix(got, "…[truncated]"))
	}
}

func TestQuote(t *testing.T) {
	require.Equal(t, `"nginx"`, Quote("nginx", 0))
	require.Equal(t, `"evil\x1b[31m\n"`, Quote("evil\x1b[31m\n", 0))
	require.Equal(t, `"\xff"`, Quote("\xff", 0))
	require.Equal(t, `"abc"…`, Quote("abcdef", 3))
}

func TestValidTaskID(t *testing.T) {
	for _, id := range []string{"t-1", "01J9Z7", "a.b_c-d", strings.Repeat("a", 128)} {
		require.True(t, ValidTaskID(id), id)
	}
	for _, id := range []string{"", ".", "..", "a/b", "a b", "a\x00", strings.Repeat("a", 129), "é"} {
		require.False(t, ValidTaskID(id), id)
	}
}

func TestLoggerWritesHclogJSON(t *testing.T) {
	var buf bytes.Buffer
	old := stderr
	defer func() { stderr = old }()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	stderr = w
	Logger().Warn("cleaned", "files", 3)
	require.NoError(t, w.Close())
	_, err = buf.ReadFrom(r)
	require.NoError(t, err)

	var line map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &line))
	require.Equal(t, "warn", line["@level"])
	require.Equal(t, "cleaned", line["@message"])
	require.EqualValues(t, 3, line["files"])
	ts, ok := line["@timestamp"].(string)
	require.True(t, ok)
	_, err = time.Parse(hclogTime, ts)
	require.NoError(t, err, "go-plugin parses this layout")

	for l, want := range map[slog.Level]string{slog.LevelDebug - 4: "trace", slog.LevelDebug: "debug", slog.LevelInfo: "info", slog.LevelWarn: "warn", slog.LevelError: "error"} {
		require.Equal(t, want, hclogLevel(l))
	}
}

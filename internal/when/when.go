// Package when compiles and evaluates the optional CEL expression of a
// policy's trigger (spec.trigger.when): true when a check result counts as
// failed.
//
// The expression sees two variables:
//
//	result.status   string: "ok", "warning", "critical" or "unknown"
//	result.output   string: the check's output (at most 4 KiB)
//	result.metrics  map(string, double): the check's metrics
//	labels          map(string, string): the agent's labels
//
// and must be a bool, e.g. `result.metrics.used_percent > 95 &&
// labels.env == "prod"`. result is a typed object, so a misspelt field
// (`result.stauts`) is refused when the policy is applied, not when it
// runs. Numbers of different types compare (`result.metrics.x > 90`), and
// optional syntax (`result.metrics.?cpu.orValue(0.0) > 90`) and the CEL
// strings extension are available.
//
// The package has no dependency on the rest of Tend, so policy validation
// (tendctl and the control plane) and the trigger engine share one
// definition of the language. It does no I/O; a Program is safe for
// concurrent use.
package when

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
)

// Limits on an expression. CostLimit bounds the work of one evaluation (the
// CEL cost units are roughly one per operation plus the size of strings
// scanned), so a comprehension over a huge metrics map or a regex over the
// whole output cannot stall the engine.
const (
	MaxExprLen     = 4096    // characters
	MaxNesting     = 32      // parser recursion depth
	CostLimit      = 100_000 // cost units per evaluation
	interruptEvery = 100     // comprehension iterations between checks of the context
)

// Input is what an expression sees.
type Input struct {
	// Status is "ok", "warning", "critical" or "unknown".
	Status  string
	Output  string
	Metrics map[string]float64
	Labels  map[string]string
}

// result is the CEL object `result`. Its Go name is part of the type name
// CEL reports ("when.result"); the cel tags are the field names.
type result struct {
	Status  string             `cel:"status"`
	Output  string             `cel:"output"`
	Metrics map[string]float64 `cel:"metrics"`
}

// Field and variable names, for error hints.
const (
	resultFields = "status, output, metrics"
	variables    = "result, labels"
)

var env = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[result](), ext.ParseStructTags(true)),
		cel.Variable("result", cel.ObjectType("when.result")),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		cel.ParserExpressionSizeLimit(MaxExprLen),
		cel.ParserRecursionLimit(MaxNesting),
	)
})

// Program is a compiled expression.
type Program struct {
	expr string
	prg  cel.Program
}

// Validate reports whether expr is a valid expression. An empty (or blank)
// expression is valid: the trigger has no `when`. The error names the
// expression and says what is wrong and where (line:column), on one line,
// so the policy validator can prefix the field name.
func Validate(expr string) error {
	if strings.TrimSpace(expr) == "" {
		return nil
	}
	_, err := Compile(expr)
	return err
}

// Compile parses and type-checks expr once. It is an error for expr to be
// blank; callers treat a blank `when` as no expression.
func Compile(expr string) (*Program, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("empty expression: leave `when` unset, or write a CEL bool such as result.metrics.used_percent > 95")
	}
	e, err := env()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err) // a bug, not a user error
	}
	ast, iss := e.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("invalid expression %s: %s", quote(expr), issues(iss))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("invalid expression %s: must be a bool (true when the result counts as failed), got %s", quote(expr), ast.OutputType())
	}
	prg, err := e.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(interruptEvery),
	)
	if err != nil {
		return nil, fmt.Errorf("invalid expression %s: %w", quote(expr), err)
	}
	return &Program{expr: expr, prg: prg}, nil
}

// String returns the source expression.
func (p *Program) String() string { return p.expr }

// Eval evaluates the expression. An error (a missing map key, the cost
// limit, a cancelled ctx) is returned with the expression named; the value
// is then false.
func (p *Program) Eval(ctx context.Context, in Input) (bool, error) {
	act := &activation{
		result: result{Status: in.Status, Output: in.Output, Metrics: in.Metrics},
		labels: in.Labels,
	}
	if act.result.Metrics == nil {
		act.result.Metrics = map[string]float64{}
	}
	if act.labels == nil {
		act.labels = map[string]string{}
	}
	out, _, err := p.prg.ContextEval(ctx, act)
	if err != nil {
		return false, fmt.Errorf("when %s: %w", quote(p.expr), err)
	}
	b, ok := out.(types.Bool)
	if !ok { // unreachable: the output type was checked
		return false, fmt.Errorf("when %s: got %s, want bool", quote(p.expr), out.Type())
	}
	return bool(b), nil
}

// activation resolves the two variables without building a map per
// evaluation.
type activation struct {
	result result
	labels map[string]string
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "result":
		return &a.result, true
	case "labels":
		return a.labels, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// issues formats CEL's errors on one line ("1:8: undefined field 'x'; ...")
// with a hint for the usual mistakes.
func issues(iss *cel.Issues) string {
	var b strings.Builder
	for i, e := range iss.Errors() {
		if i > 0 {
			b.WriteString("; ")
		}
		msg := strings.Replace(firstLine(e.Message), " (in container '')", "", 1)
		if e.Location.Line() > 0 {
			fmt.Fprintf(&b, "%d:%d: ", e.Location.Line(), e.Location.Column()+1)
		}
		b.WriteString(msg)
		switch {
		case strings.HasPrefix(e.Message, "undefined field"):
			b.WriteString(" (result has " + resultFields + ")")
		case strings.HasPrefix(e.Message, "undeclared reference"):
			b.WriteString(" (variables: " + variables + ")")
		case strings.Contains(e.Message, "(double, int)") || strings.Contains(e.Message, "(int, double)"):
			b.WriteString(" (metrics are doubles: write 90.0, not 90)")
		}
	}
	return b.String()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// quote quotes an expression for an error message, shortened when long.
func quote(expr string) string {
	const max = 200
	if r := []rune(expr); len(r) > max {
		expr = string(r[:max]) + "…"
	}
	return fmt.Sprintf("%q", expr)
}

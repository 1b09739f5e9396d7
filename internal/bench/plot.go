package bench

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

type series struct {
	name  string
	value func(r *Result) float64
}

type panel struct {
	title, unit string
	target      float64 // drawn as a dashed line when > 0
	series      []series
	log         bool // logarithmic y axis (latencies span decades)
}

var plotPanels = []panel{
	{"Control-plane RSS per connected agent", "KB", 48, []series{{"RSS per agent", func(r *Result) float64 { return r.CPRSSPerAgentKB }}}, false},
	{"Control-plane CPU per result", "µs", 40, []series{{"CPU per result", func(r *Result) float64 { return r.CPUMicrosPerResult }}}, false},
	{"Results durably committed", "results/s", 0, []series{
		{"acknowledged", func(r *Result) float64 { return r.ResultsPerSecond }},
		{"offered", func(r *Result) float64 { return r.OfferedPerSecond }},
	}, false},
	{"fsyncs", "per second", 200, []series{{"fsync+fdatasync", func(r *Result) float64 { return r.FsyncsPerSecond }}}, false},
	{"Result sent → durable ack", "ms (log)", 25, []series{
		{"p50", func(r *Result) float64 { return r.AckP50Ms }},
		{"p99", func(r *Result) float64 { return r.AckP99Ms }},
	}, true},
	{"Failing result → task acked", "ms (log)", 50, []series{
		{"p50", func(r *Result) float64 { return r.TriggerP50Ms }},
		{"p99", func(r *Result) float64 { return r.TriggerP99Ms }},
	}, true},
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
}

// Plot draws the cost of a sweep against fleet size (one panel per
// measure, dashed lines at the targets) as SVG or PNG, chosen by the file's
// extension.
func Plot(path string, rs []*Result) error {
	if len(rs) == 0 {
		return fmt.Errorf("plot: no results")
	}
	const cols, rows = 3, 2
	plots := make([][]*plot.Plot, rows)
	maxAgents := 0.0
	for _, r := range rs {
		maxAgents = max(maxAgents, float64(r.Agents))
	}
	for j := range rows {
		plots[j] = make([]*plot.Plot, cols)
		for i := range cols {
			pn := plotPanels[j*cols+i]
			p := plot.New()
			p.Title.Text = pn.title
			p.X.Label.Text = "agents"
			p.Y.Label.Text = pn.unit
			p.X.Min, p.Y.Min = 0, 0
			if pn.log {
				p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
				p.Y.Min = 1
			}
			p.Legend.Top, p.Legend.Left = true, true
			// Room above the data for the legend.
			top := pn.target
			for _, s := range pn.series {
				for _, r := range rs {
					top = max(top, s.value(r))
				}
			}
			if pn.log {
				p.Y.Max = max(top, 1) * 20
			} else {
				p.Y.Max = max(top, 1) * 1.4
			}
			for k, s := range pn.series {
				xys := make(plotter.XYs, len(rs))
				for n, r := range rs {
					xys[n].X, xys[n].Y = float64(r.Agents), s.value(r)
					if pn.log {
						xys[n].Y = max(xys[n].Y, 1)
					}
				}
				line, points, err := plotter.NewLinePoints(xys)
				if err != nil {
					return err
				}
				line.Color, points.Color = palette[k%len(palette)], palette[k%len(palette)]
				p.Add(line, points)
				p.Legend.Add(s.name, line, points)
			}
			if pn.target > 0 {
				t, err := plotter.NewLine(plotter.XYs{{X: 0, Y: pn.target}, {X: maxAgents, Y: pn.target}})
				if err != nil {
					return err
				}
				t.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				t.Color = color.Gray{Y: 0x80}
				p.Add(t)
				p.Legend.Add("target", t)
			}
			plots[j][i] = p
		}
	}
	w, h := 36*vg.Centimeter, 20*vg.Centimeter
	var (
		canvas vg.CanvasSizer
		out    io.WriterTo
	)
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".svg":
		c := vgsvg.New(w, h)
		canvas, out = c, c
	case ".png":
		c := vgimg.New(w, h)
		canvas, out = c, vgimg.PngCanvas{Canvas: c}
	default:
		return fmt.Errorf("plot %s: want a .svg or .png file", path)
	}
	dc := draw.New(canvas)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Centimeter, PadY: vg.Centimeter,
		PadTop: vg.Points(8), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	canvases := plot.Align(plots, tiles, dc)
	for j := range rows {
		for i := range cols {
			plots[j][i].Draw(canvases[j][i])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := out.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"strings"
	"unicode"
)

// Chart layout, in pixels. Text is the 5x7 font scaled by textScale.
const (
	textScale  = 2
	charW      = 6 * textScale // 5 columns and a space
	lineH      = 9 * textScale
	chartW     = 1000
	labelW     = 34 * charW // the longest label
	barH       = 12
	rowGap     = 10
	chartTop   = 4 * lineH
	plotLeft   = labelW + 20
	plotRight  = chartW - 30
	ratioFloor = 0.05 // the log axis spans 0.05x to 20x; longer bars are cut
	ratioCeil  = 20.0
)

var (
	colPlain   = color.RGBA{0x1f, 0x77, 0xb4, 0xff} // blue: vs plain TCP
	colStunnel = color.RGBA{0xff, 0x7f, 0x0e, 0xff} // orange: vs stunnel
	colInk     = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colGrid    = color.RGBA{0xd0, 0xd0, 0xd0, 0xff}
)

// chartLabels are the short names of the measures on the chart.
var chartLabels = map[string]string{
	"tput1": "THROUGHPUT 1 STREAM", "tput8": "THROUGHPUT 8 STREAMS",
	"rr_p50": "REQ/RESP P50", "rr_p90": "REQ/RESP P90", "rr_p99": "REQ/RESP P99",
	"cps1": "CONN/S 1 AT A TIME", "cps8": "CONN/S 8 AT A TIME",
	"http_p50": "HTTP P50", "http_p90": "HTTP P90", "http_p99": "HTTP P99",
	"http_cpu": "CPU/1K REQ BUSIEST", "http_cpu_total": "CPU/1K REQ TOTAL", "http_rss": "PEAK RSS HTTP",
}

// Chart draws every Warren ratio as a horizontal bar on a log axis centred
// on 1x: blue against plain TCP, orange against stunnel, one row per
// measure and topology.
func Chart(res *Results) ([]byte, error) {
	type row struct {
		label string
		plain *float64
		stun  *float64
	}
	var rows []row
	for _, where := range []string{CrossNode, SameNode} {
		for _, ms := range measures {
			var rw row
			for _, r := range res.Ratios {
				if r.Measure != ms.Name || r.Where != where {
					continue
				}
				v := r.Ratio
				if r.Versus == PathPlain {
					rw.plain = &v
				} else {
					rw.stun = &v
				}
			}
			if rw.plain == nil && rw.stun == nil {
				continue
			}
			dir := "LO"
			if ms.Higher {
				dir = "HI"
			}
			short := "X-NODE"
			if where == SameNode {
				short = "1 NODE"
			}
			rw.label = fmt.Sprintf("%s %s (%s)", chartLabels[ms.Name], short, dir)
			rows = append(rows, rw)
		}
	}
	rowH := 2*barH + rowGap
	h := chartTop + len(rows)*rowH + 3*lineH
	img := image.NewRGBA(image.Rect(0, 0, chartW, h))
	fill(img, img.Bounds(), color.White)

	drawText(img, 10, 8, "WARREN AS A RATIO: BLUE = TO PLAIN TCP, ORANGE = TO STUNNEL", colInk)
	drawText(img, 10, 8+lineH, "LOG SCALE, 1X = EQUAL. HI: HIGHER IS BETTER, LO: LOWER IS BETTER", colInk)
	if res.Smoke {
		drawText(img, 10, 8+2*lineH, "SMOKE RUN: FIGURES MEAN NOTHING", colStunnel)
	}
	x := func(r float64) int {
		r = math.Min(math.Max(r, ratioFloor), ratioCeil)
		f := (math.Log10(r) - math.Log10(ratioFloor)) / (math.Log10(ratioCeil) - math.Log10(ratioFloor))
		return plotLeft + int(f*float64(plotRight-plotLeft))
	}
	bottom := chartTop + len(rows)*rowH
	for _, t := range []float64{0.1, 0.2, 0.5, 1, 2, 5, 10} {
		c := colGrid
		if t == 1 {
			c = colInk
		}
		fill(img, image.Rect(x(t), chartTop-4, x(t)+1, bottom), c)
		s := strings.TrimSuffix(fmt.Sprintf("%g", t), ".0") + "X"
		drawText(img, x(t)-len(s)*charW/2, bottom+6, s, colInk)
	}
	for i, rw := range rows {
		y := chartTop + i*rowH
		drawText(img, 10, y+barH-7*textScale/2, rw.label, colInk)
		for j, v := range []*float64{rw.plain, rw.stun} {
			if v == nil {
				continue
			}
			c := colPlain
			if j == 1 {
				c = colStunnel
			}
			a, b := x(1), x(*v)
			if b < a {
				a, b = b, a
			}
			fill(img, image.Rect(a, y+j*barH, max(b, a+1), y+(j+1)*barH-1), c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encoding chart: %w", err)
	}
	return buf.Bytes(), nil
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.Set(x, y, c)
		}
	}
}

// drawText writes s at (x, y), its top left corner; characters the font
// lacks print as '?'.
func drawText(img *image.RGBA, x, y int, s string, c color.Color) {
	for _, ch := range strings.ToUpper(s) {
		g, ok := glyphs[unicode.ToUpper(ch)]
		if !ok {
			g = glyphs['?']
		}
		for gy, line := range g {
			for gx, p := range line {
				if p == '#' {
					fill(img, image.Rect(x+gx*textScale, y+gy*textScale, x+(gx+1)*textScale, y+(gy+1)*textScale), c)
				}
			}
		}
		x += charW
	}
}

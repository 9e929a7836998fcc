/*
 * plot.c — fragreplay --plot: a self-contained SVG of memory over the trace's time.
 *
 * One chart: bytes requested (as the trace states them; the same for every configuration),
 * and for each configuration bytes allocated (dashed) and reserved (solid), against the
 * trace's own time (or the event number when the trace carries no time). Each point is the
 * maximum over the span of events it stands for, so no peak is lost to downsampling.
 */
#include "replay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define W 960
#define H 480
#define L 80  /* left margin */
#define B 60  /* bottom margin */
#define T 50  /* top margin */
#define R 240 /* right margin: legend */

static const char *const colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd",
                                     "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

struct scale {
    double x_max, y_max;
    bool by_time;
};

static double px(const struct scale *s, double x)
{
    return L + (W - L - R) * (s->x_max > 0 ? x / s->x_max : 0);
}

static double py(const struct scale *s, double y)
{
    return H - B - (H - B - T) * (s->y_max > 0 ? y / s->y_max : 0);
}

static double xval(const struct scale *s, const struct sample *p, unsigned i)
{
    return s->by_time ? (double)p->time_us / 1e6 : (double)i;
}

static void polyline(FILE *f, const struct scale *s, const struct result *r, size_t field,
                     const char *color, const char *dash)
{
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", color,
            dash);
    for (unsigned i = 0; i < r->nsamples; i++) {
        uint64_t v;
        memcpy(&v, (const char *)&r->samples[i] + field, sizeof v);
        fprintf(f, "%.1f,%.1f ", px(s, xval(s, &r->samples[i], i)),
                py(s, (double)v / (double)(1ULL << 30)));
    }
    fprintf(f, "\"/>\n");
}

static void axes(FILE *f, const struct scale *s)
{
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#000\"/>\n", L, H - B, W - R,
            H - B);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#000\"/>\n", L, T, L, H - B);
    for (int k = 0; k <= 4; k++) {
        double y = s->y_max * k / 4, x = s->x_max * k / 4;
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", L - 6,
                py(s, y) + 4, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.*f</text>\n", px(s, x),
                H - B + 18, s->by_time ? 1 : 0, x);
    }
    fprintf(f,
            "<text x=\"20\" y=\"%d\" transform=\"rotate(-90 20 %d)\" "
            "text-anchor=\"middle\">GiB</text>\n",
            (H - B + T) / 2, (H - B + T) / 2);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", (L + W - R) / 2,
            H - 15, s->by_time ? "trace time (s)" : "event");
}

static void legend(FILE *f, int row, const char *color, const char *dash, const char *label)
{
    int y = T + 10 + 18 * row;
    fprintf(f,
            "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>"
            "<text x=\"%d\" y=\"%d\">",
            W - R + 15, y, W - R + 40, y, color, dash, W - R + 46, y + 4);
    for (const char *p = label; *p && p - label < 30; p++) {
        if (*p == '<' || *p == '>' || *p == '&')
            fprintf(f, "&#%d;", *p);
        else
            fputc(*p, f);
    }
    fprintf(f, "</text>\n");
}

static struct scale make_scale(const struct rtrace *t, const struct result *const *res, int n)
{
    struct scale s = {0, 0, t->span_us > 0};
    for (int c = 0; c < n; c++) {
        for (unsigned i = 0; res[c]->status == 0 && i < res[c]->nsamples; i++) {
            const struct sample *p = &res[c]->samples[i];
            double x = xval(&s, p, i), y = (double)p->reserved;
            s.x_max = x > s.x_max ? x : s.x_max;
            y = y > (double)p->requested ? y : (double)p->requested;
            y = y > (double)p->allocated ? y : (double)p->allocated;
            s.y_max = y / (double)(1ULL << 30) > s.y_max ? y / (double)(1ULL << 30) : s.y_max;
        }
    }
    s.y_max = s.y_max > 0 ? s.y_max * 1.05 : 1;
    s.x_max = s.x_max > 0 ? s.x_max : 1;
    return s;
}

int plot_svg(const char *path, const struct rtrace *t, char *const *confs,
             const struct result *const *res, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "fragreplay: --plot %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct scale s = make_scale(t, res, n);
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
            "<text x=\"%d\" y=\"25\" font-size=\"15\">fragreplay: requested, allocated "
            "(dashed) and reserved (solid) bytes</text>\n",
            W, H, L);
    axes(f, &s);
    int row = 0, drawn = 0;
    for (int c = 0; c < n; c++) {
        if (res[c]->status != 0)
            continue;
        if (!drawn++) {
            polyline(f, &s, res[c], offsetof(struct sample, requested), "#000", "");
            legend(f, row++, "#000", "", "requested (trace)");
        }
        const char *color = colors[c % 8], *label = confs[c][0] ? confs[c] : "(default)";
        polyline(f, &s, res[c], offsetof(struct sample, allocated), color,
                 " stroke-dasharray=\"5,3\"");
        polyline(f, &s, res[c], offsetof(struct sample, reserved), color, "");
        legend(f, row++, color, "", label);
    }
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}

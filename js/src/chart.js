// The live candlestick chart of kiteohlc_lab: TradingView's lightweight-charts fed by a small protocol.
//
// One module, two hosts: the default export is an anywidget widget (kiteohlc_lab.notebook.chart),
// and `mountEventSource` runs the same chart on a web page fed by server-sent events (kiteohlc-lab
// serve). Messages from the kernel/server (see docs in kiteohlc_lab/notebook/chart.py):
//   {kind: "full", seq, n, cols, tick, ..., overlays: [...]}  + binary columns  -> setData (a (re)load)
//   {kind: "bars", seq, bars: [[t, o, h, l, c, v], ...], old: k}                -> series.update()
//   {kind: "overlay", name, points: [[t, v], ...]} / {kind: "overlay", name, reset: true, ...}
//   {kind: "markers", markers: [...]}
// Times arrive as UTC seconds already shifted to IST (the axis shows exchange time).
import {
  createChart,
  createSeriesMarkers,
  CandlestickSeries,
  HistogramSeries,
  LineSeries,
  CrosshairMode,
} from "lightweight-charts";

const UP = "#26a69a";
const DOWN = "#ef5350";
const UP_VOL = "rgba(38,166,154,0.45)";
const DOWN_VOL = "rgba(239,83,80,0.45)";
const PALETTE = ["#2962ff", "#ff6d00", "#ab47bc", "#00897b", "#c0ca33", "#6d4c41"];

function decimals(tick) {
  if (!(tick > 0)) return 2;
  const s = String(tick);
  if (s.includes("e-")) return Math.min(8, parseInt(s.split("e-")[1], 10));
  const i = s.indexOf(".");
  return i < 0 ? 0 : Math.min(8, s.length - i - 1);
}

function f64(buf) {
  // ipywidgets hands DataViews (sometimes ArrayBuffers); a misaligned view is copied once
  if (buf instanceof ArrayBuffer) return new Float64Array(buf);
  const { buffer, byteOffset, byteLength } = buf;
  if (byteOffset % 8 === 0) return new Float64Array(buffer, byteOffset, byteLength / 8);
  return new Float64Array(buffer.slice(byteOffset, byteOffset + byteLength));
}

function fmtVolume(v) {
  if (!isFinite(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e7) return (v / 1e7).toFixed(2) + " Cr";
  if (a >= 1e5) return (v / 1e5).toFixed(2) + " L";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + " K";
  return String(Math.round(v * 100) / 100);
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = (n) => String(n).padStart(2, "0");
function fmtTime(t, seconds) {
  // t: IST wall clock as if it were UTC seconds
  const d = new Date(t * 1000);
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}` + (seconds ? `:${pad(d.getUTCSeconds())}` : "");
  return `${pad(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${hm}`;
}

const CSS = `
.kohlc-chart { position: relative; font: 12px/1.4 -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: #222; background: #fff; border: 1px solid #e0e3eb; border-radius: 4px; box-sizing: border-box; }
.kohlc-chart .kohlc-head { display: flex; gap: 10px; align-items: baseline; padding: 4px 8px;
  border-bottom: 1px solid #eef0f4; white-space: nowrap; overflow: hidden; }
.kohlc-chart .kohlc-title { font-weight: 600; }
.kohlc-chart .kohlc-legend span { margin-right: 8px; }
.kohlc-chart .kohlc-state { margin-left: auto; color: #787b86; }
.kohlc-chart .kohlc-plot { position: relative; width: 100%; }
.kohlc-chart .kohlc-live { position: absolute; right: 70px; bottom: 40px; z-index: 3; display: none;
  padding: 3px 10px; border: 1px solid #2962ff; border-radius: 12px; background: #fff; color: #2962ff;
  cursor: pointer; font: inherit; }
.kohlc-chart .kohlc-live:hover { background: #2962ff; color: #fff; }
.kohlc-chart .kohlc-pick { display: inline-flex; gap: 4px; align-items: baseline; }
.kohlc-chart .kohlc-pick input, .kohlc-chart .kohlc-pick select { font: inherit; padding: 0 2px;
  border: 1px solid #d1d4dc; border-radius: 3px; background: #fff; color: inherit; }
.kohlc-chart .kohlc-pick input { width: 11em; }
.kohlc-chart .kohlc-error { color: #ef5350; }
`;

function injectCss(doc) {
  if (doc.getElementById("kohlc-chart-css")) return;
  const style = doc.createElement("style");
  style.id = "kohlc-chart-css";
  style.textContent = CSS;
  doc.head.appendChild(style);
}

/**
 * Build a chart in `el`. `opts`: {title, tick, height, seconds}. Returns {handle(msg, buffers), destroy()}.
 * `el.dataset` carries counters for tests: updates (bars applied with update()), loads (setData
 * calls), bars, last (the drawn last candle), from/to (visible logical range).
 */
export function createLiveChart(el, opts = {}) {
  const doc = el.ownerDocument || document;
  injectCss(doc);
  const root = doc.createElement("div");
  root.className = "kohlc-chart";
  const head = doc.createElement("div");
  head.className = "kohlc-head";
  const title = doc.createElement("span");
  title.className = "kohlc-title";
  const legend = doc.createElement("span");
  legend.className = "kohlc-legend";
  const state = doc.createElement("span");
  state.className = "kohlc-state";
  head.append(title, legend, state);
  // the picker (notebook host only: opts.pick(symbol, tf) asks the kernel to switch)
  let picker = null;
  if (opts.pick) {
    const box = doc.createElement("span");
    box.className = "kohlc-pick";
    const sym = doc.createElement("input");
    sym.className = "kohlc-symbol";
    sym.title = "Symbol (Enter to switch)";
    const listId = `kohlc-symbols-${Math.random().toString(36).slice(2)}`;
    const list = doc.createElement("datalist");
    list.id = listId;
    sym.setAttribute("list", listId);
    const tfSel = doc.createElement("select");
    tfSel.className = "kohlc-tf";
    tfSel.title = "Timeframe";
    const err = doc.createElement("span");
    err.className = "kohlc-error";
    box.append(sym, list, tfSel, err);
    head.insertBefore(box, legend);
    title.style.display = "none";
    const fill = (sel, values, current) => {
      const want = values.includes(current) ? values : [current, ...values];
      if ([...sel.options].map((o) => o.value).join("|") !== want.join("|")) {
        sel.replaceChildren(...want.map((v) => { const o = doc.createElement("option"); o.value = v; o.textContent = v; return o; }));
      }
      sel.value = current;
    };
    picker = {
      set(p) {
        if (doc.activeElement !== sym) sym.value = p.symbol;
        list.replaceChildren(...(p.symbols || []).map((v) => { const o = doc.createElement("option"); o.value = v; return o; }));
        fill(tfSel, p.tfs || [], p.tf);
        err.textContent = p.error || "";
      },
    };
    sym.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && sym.value.trim()) { ev.preventDefault(); opts.pick(sym.value.trim(), null); }
      ev.stopPropagation(); // typing here is not a notebook shortcut
    });
    sym.addEventListener("change", () => { if (sym.value.trim()) opts.pick(sym.value.trim(), null); });
    tfSel.addEventListener("change", () => opts.pick(null, tfSel.value));
  }
  const plot = doc.createElement("div");
  plot.className = "kohlc-plot";
  plot.style.height = `${opts.height || 420}px`;
  const live = doc.createElement("button");
  live.className = "kohlc-live";
  live.type = "button";
  live.textContent = "Live \u25B6";
  live.title = "Jump back to the latest candle";
  plot.appendChild(live);
  root.append(head, plot);
  el.appendChild(root);

  let tick = opts.tick > 0 ? opts.tick : 0.05;
  let precision = decimals(tick);
  let seconds = !!opts.seconds;
  const priceFormatter = (p) => (Math.round(p / tick) * tick).toFixed(precision); // to the tick size

  const chart = createChart(plot, {
    autoSize: true,
    layout: { background: { color: "#ffffff" }, textColor: "#333",
              panes: { separatorColor: "#e0e3eb" } },
    grid: { vertLines: { color: "#f2f3f5" }, horzLines: { color: "#f2f3f5" } },
    crosshair: { mode: CrosshairMode.Normal },
    rightPriceScale: { borderColor: "#e0e3eb" },
    timeScale: { borderColor: "#e0e3eb", timeVisible: true, secondsVisible: seconds, rightOffset: 6,
                 shiftVisibleRangeOnNewBar: true },
    // prices: each series formats its own scale (candles to the tick size, volume as 63K)
    localization: { timeFormatter: (t) => fmtTime(t, seconds) },
  });
  const candles = chart.addSeries(CandlestickSeries, {
    upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
    priceFormat: { type: "price", precision, minMove: tick },
  });
  const volume = chart.addSeries(HistogramSeries, {
    priceFormat: { type: "volume" }, priceLineVisible: false, lastValueVisible: false,
  }, 1);
  const panes = chart.panes();
  if (panes.length > 1) {
    panes[0].setStretchFactor(3);
    panes[1].setStretchFactor(1);
  }
  const markers = createSeriesMarkers(candles, []);
  const overlays = new Map(); // name -> {series, last}

  let loaded = false;
  let seq = -1;
  let lastBar = null; // [t, o, h, l, c, v]
  let count = 0;
  let updates = 0;
  let loads = 0;

  const ds = el.dataset || {};
  function stamp() {
    ds.updates = String(updates);
    ds.loads = String(loads);
    ds.bars = String(count);
    ds.last = lastBar ? lastBar.join(",") : "";
    const r = chart.timeScale().getVisibleLogicalRange();
    if (r) {
      ds.from = r.from.toFixed(2);
      ds.to = r.to.toFixed(2);
    }
  }

  function showLegend(bar) {
    if (!bar) {
      legend.textContent = "";
      return;
    }
    const [, o, h, l, c, v] = bar;
    const color = c >= o ? UP : DOWN;
    legend.innerHTML = "";
    for (const [k, val] of [["O", o], ["H", h], ["L", l], ["C", c]]) {
      const s = doc.createElement("span");
      s.textContent = `${k} ${priceFormatter(val)}`;
      s.style.color = color;
      legend.appendChild(s);
    }
    const s = doc.createElement("span");
    s.textContent = `V ${fmtVolume(v)}`;
    legend.appendChild(s);
    const t = doc.createElement("span");
    t.textContent = fmtTime(bar[0], seconds);
    t.style.color = "#787b86";
    legend.appendChild(t);
  }

  let hovering = null; // the bar under the crosshair, or null: the legend shows the last bar
  chart.subscribeCrosshairMove((param) => {
    const d = param && param.time !== undefined ? param.seriesData.get(candles) : undefined;
    if (d && d.open !== undefined) {
      const v = param.seriesData.get(volume);
      hovering = [param.time, d.open, d.high, d.low, d.close, v ? v.value : NaN];
    } else {
      hovering = null;
    }
    showLegend(hovering || lastBar);
  });

  function atLive(range) {
    return !range || count === 0 || range.to >= count - 1.5;
  }
  chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
    live.style.display = atLive(range) ? "none" : "block";
    if (range) {
      ds.from = range.from.toFixed(2);
      ds.to = range.to.toFixed(2);
    }
  });
  live.addEventListener("click", () => chart.timeScale().scrollToRealTime());

  const volBar = (t, o, c, v) => ({ time: t, value: v, color: c >= o ? UP_VOL : DOWN_VOL });

  function setFormat(newTick, newSeconds) {
    if (newTick > 0 && newTick !== tick) {
      tick = newTick;
      precision = decimals(tick);
      candles.applyOptions({ priceFormat: { type: "price", precision, minMove: tick } });
    }
    if (newSeconds !== undefined && !!newSeconds !== seconds) {
      seconds = !!newSeconds;
      chart.applyOptions({ timeScale: { secondsVisible: seconds } });
    }
  }

  function overlay(name, spec) {
    let o = overlays.get(name);
    if (!o) {
      const kind = spec.type === "histogram" ? HistogramSeries : LineSeries;
      const color = spec.color || PALETTE[overlays.size % PALETTE.length];
      const options = kind === LineSeries
        ? { color, lineWidth: spec.width || 2, priceLineVisible: false, lastValueVisible: false,
            crosshairMarkerVisible: false, title: spec.title || name }
        : { color, priceLineVisible: false, lastValueVisible: false, title: spec.title || name };
      if (kind === LineSeries) options.priceFormat = { type: "price", precision, minMove: tick };
      const pane = spec.pane === undefined ? (kind === LineSeries ? 0 : 1) : spec.pane;
      o = { series: chart.addSeries(kind, Object.assign(options, spec.options || {}), pane), last: -Infinity };
      overlays.set(name, o);
    }
    return o;
  }

  function overlayLoad(o, t, v) {
    const data = new Array(t.length);
    for (let i = 0; i < t.length; i++) {
      data[i] = Number.isFinite(v[i]) ? { time: t[i], value: v[i] } : { time: t[i] };
    }
    o.series.setData(data);
    o.last = t.length ? t[t.length - 1] : -Infinity;
  }

  function overlayUpdate(o, points) {
    for (const [t, v] of points) {
      const p = v === null || !Number.isFinite(v) ? { time: t } : { time: t, value: v };
      o.series.update(p, t < o.last);
      if (t > o.last) o.last = t;
    }
  }

  function full(msg, buffers) {
    const t0 = performance.now();
    const n = msg.n | 0;
    const cols = msg.cols || ["time", "open", "high", "low", "close", "volume"];
    const col = {};
    cols.forEach((name, i) => { col[name] = f64(buffers[i]); });
    const { time: T, open: O, high: H, low: L, close: C, volume: V } = col;
    setFormat(msg.tick, msg.seconds);
    if (msg.title !== undefined) title.textContent = msg.title;
    const bars = new Array(n);
    const vols = new Array(n);
    for (let i = 0; i < n; i++) {
      bars[i] = { time: T[i], open: O[i], high: H[i], low: L[i], close: C[i] };
      vols[i] = volBar(T[i], O[i], C[i], V[i]);
    }
    const keep = loaded ? chart.timeScale().getVisibleLogicalRange() : null;
    const follow = !loaded || atLive(keep);
    candles.setData(bars);
    volume.setData(vols);
    count = n;
    lastBar = n ? [T[n - 1], O[n - 1], H[n - 1], L[n - 1], C[n - 1], V[n - 1]] : null;
    let b = cols.length;
    for (const spec of msg.overlays || []) {
      const o = overlay(spec.name, spec);
      overlayLoad(o, T.subarray(0, spec.n === undefined ? n : spec.n), f64(buffers[b++]));
    }
    for (const [name, o] of overlays) {
      if (!(msg.overlays || []).some((s) => s.name === name)) {
        chart.removeSeries(o.series);
        overlays.delete(name);
      }
    }
    markers.setMarkers(msg.markers || []);
    if (!loaded) {
      const ts = chart.timeScale();
      const shown = Math.min(n, opts.visible || 150);
      if (n) ts.setVisibleLogicalRange({ from: n - shown, to: n - 1 + 6 });
    } else if (follow) {
      chart.timeScale().scrollToRealTime();
    } else if (keep) {
      chart.timeScale().setVisibleLogicalRange(keep);
    }
    loaded = true;
    loads++;
    seq = msg.seq;
    state.textContent = msg.state || "";
    showLegend(hovering || lastBar);
    stamp();
    ds.loadMs = (performance.now() - t0).toFixed(1); // decode + setData of the full load
  }

  function bars(msg) {
    for (const bar of msg.bars) {
      const [t, o, h, l, c, v] = bar;
      const old = lastBar !== null && t < lastBar[0];
      candles.update({ time: t, open: o, high: h, low: l, close: c }, old);
      volume.update(volBar(t, o, c, v), old);
      if (!old) {
        if (lastBar === null || t > lastBar[0]) count++;
        lastBar = bar;
      }
      updates++;
    }
    if (msg.state !== undefined) state.textContent = msg.state;
    if (hovering === null) showLegend(lastBar);
    stamp();
  }

  function handle(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    if (msg.kind === "full") {
      full(msg, buffers || []);
      return;
    }
    if (!loaded) return; // deltas before the first load are covered by it
    if (msg.kind === "bars") {
      if (msg.seq !== undefined && msg.seq !== seq + 1) {
        // a message was lost (or this view joined late): ask for a full load
        if (opts.resync) opts.resync();
        return;
      }
      seq = msg.seq === undefined ? seq : msg.seq;
      bars(msg);
    } else if (msg.kind === "overlay") {
      const o = overlay(msg.name, msg);
      if (msg.reset) {
        const b = buffers || [];
        overlayLoad(o, b.length > 1 ? f64(b[0]) : msg.t || [], b.length > 1 ? f64(b[1]) : msg.v || []);
      }
      else overlayUpdate(o, msg.points || []);
    } else if (msg.kind === "markers") {
      markers.setMarkers(msg.markers || []);
    } else if (msg.kind === "state") {
      state.textContent = msg.state || "";
    }
  }

  stamp();
  return {
    chart,
    handle,
    setPicker(p) { if (picker) picker.set(p); },
    destroy() {
      chart.remove();
      root.remove();
    },
  };
}

// -- anywidget host
function render({ model, el }) {
  const view = createLiveChart(el, {
    title: model.get("title"),
    tick: model.get("tick_size"),
    height: model.get("height"),
    seconds: model.get("seconds"),
    visible: model.get("visible"),
    resync: () => model.send({ type: "sync" }),
    pick: (symbol, tf) => {
      if (symbol !== null && symbol !== model.get("symbol")) model.set("symbol", symbol);
      if (tf !== null && tf !== model.get("tf")) model.set("tf", tf);
      model.save_changes();
    },
  });
  const showPicker = () => view.setPicker({
    symbol: model.get("symbol"), tf: model.get("tf"), symbols: model.get("symbol_choices") || [],
    tfs: model.get("tf_choices") || [], error: model.get("error"),
  });
  const traits = ["symbol", "tf", "symbol_choices", "tf_choices", "error"].map((n) => `change:${n}`);
  showPicker();
  traits.forEach((ev) => model.on(ev, showPicker));
  const onMsg = (msg, buffers) => view.handle(msg, buffers);
  model.on("msg:custom", onMsg);
  model.send({ type: "sync" }); // a (re)rendered view always starts from a full load
  return () => {
    model.off("msg:custom", onMsg);
    traits.forEach((ev) => model.off(ev, showPicker));
    view.destroy();
  };
}

// -- web page host: server-sent events; a "full" event carries its columns base64-encoded
function b64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

export function mountEventSource(el, url, opts = {}) {
  const view = createLiveChart(el, opts);
  let source = null;
  const open = () => {
    if (source) source.close();
    source = new EventSource(url);
    source.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      view.handle(msg, (msg.buffers || []).map(b64));
    };
  };
  view.resync = open;
  opts.resync = open;
  open();
  return view;
}

export default { render };

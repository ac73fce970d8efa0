// Live run page: charts (uPlot), progress, status and checkpoints, fed by the
// WebSocket at /api/runs/<id>/live. Never reloads the page.
//
// Test hook: window.pretext = { charts, pointCount(key), socketState(), run() }.
(function () {
  'use strict';

  var root = document.querySelector('[data-run-id]');
  if (!root) return;

  var runId = root.getAttribute('data-run-id');
  var projectionDim = Number(root.getAttribute('data-projection-dim')) || 0;
  var TERMINAL = { completed: true, failed: true, cancelled: true };
  var CHART_HEIGHT = 220;

  // ---------------------------------------------------------------- formatting

  function fmtNum(v) {
    if (v == null || !isFinite(v)) return v == null ? '—' : String(v);
    var a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e5) return v.toExponential(2);
    if (a >= 100) return v.toFixed(1);
    if (a >= 1) return v.toFixed(3);
    if (a >= 1e-3) return v.toPrecision(3);
    return v.toExponential(2);
  }

  function fmtInt(v) {
    if (v == null || !isFinite(v)) return '—';
    return Math.round(v).toLocaleString('en-US');
  }

  function fmtAxis(v) {
    if (v == null) return '';
    var a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
    if (a >= 1000) return (v / 1000).toFixed(a >= 1e4 ? 0 : 1) + 'k';
    return String(+v.toPrecision(4));
  }

  function fmtDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return '—';
    seconds = Math.round(seconds);
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    if (h > 0) return h + 'h ' + (m < 10 ? '0' : '') + m + 'm';
    if (m > 0) return m + 'm ' + (s < 10 ? '0' : '') + s + 's';
    return s + 's';
  }

  function fmtBytes(n) {
    if (n == null || !isFinite(n)) return '—';
    var units = ['B', 'kB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  // Timestamps without a zone ("2025-12-03 13:00:00", SQLite style) are UTC.
  function parseTime(value) {
    if (value == null || value === '') return null;
    if (typeof value === 'number') return new Date(value < 1e12 ? value * 1000 : value);
    var text = String(value).trim();
    if (/^\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?$/.test(text)) text = text.replace(' ', 'T') + 'Z';
    var d = new Date(text);
    return isNaN(d.getTime()) ? null : d;
  }

  function fmtTime(value) {
    if (value == null || value === '') return '—';
    var d = parseTime(value);
    return d ? d.toLocaleString() : String(value);
  }

  // kNN accuracy is plotted in percent. The server reports a fraction in
  // [0, 1]; a value above 1 is taken to be a percentage already.
  function knnPercent(v) { return v <= 1 ? v * 100 : v; }

  // -------------------------------------------------------------- chart specs

  // Where the collapse chart turns red; lightly's examples treat values
  // approaching 1 as collapse, so 0.7 warns well before that.
  var COLLAPSE_WARN = 0.7;
  var refStd = projectionDim > 0 ? 1 / Math.sqrt(projectionDim) : null;

  var SPECS = [
    { key: 'train/loss', title: 'Loss', label: 'loss', color: '#2563eb', fill: 'rgba(37,99,235,0.08)',
      last: fmtNum },
    { key: 'knn/top1', title: 'kNN top-1', label: 'top-1 %', color: '#059669', fill: 'rgba(5,150,105,0.08)',
      map: knnPercent, points: true, emptyRange: [0, 100],
      last: function (v) { return v.toFixed(1) + '%'; },
      axis: function (v) { return +v.toFixed(1) + '%'; } },
    { key: 'train/embedding_std', title: 'Embedding std', label: 'std', color: '#7c3aed', fill: 'rgba(124,58,237,0.07)',
      caption: refStd != null ? 'healthy ≈ 1/√d = ' + fmtNum(refStd) + ' (d = ' + projectionDim + ') · collapse → 0' : 'collapse → 0',
      reference: refStd, zeroBased: true, last: fmtNum },
    // lightly's collapse level, max(0, 1 - sqrt(d) * std): 0 healthy, 1 collapsed.
    { key: 'train/collapse', title: 'Collapse level', label: 'collapse', color: '#dc2626', fill: 'rgba(220,38,38,0.06)',
      caption: 'lightly\'s max(0, 1 − √d·std): 0 healthy, 1 collapsed; warning above ' + COLLAPSE_WARN,
      reference: COLLAPSE_WARN, referenceLabel: 'warning', zeroBased: true, warnAbove: COLLAPSE_WARN, last: fmtNum },
    { key: 'train/lr', title: 'Learning rate', label: 'lr', color: '#d97706', fill: null,
      zeroBased: true, last: fmtNum },
    { key: 'train/images_per_sec', title: 'Throughput', label: 'images/s', color: '#0891b2', fill: 'rgba(8,145,178,0.07)',
      zeroBased: true, last: function (v) { return fmtInt(v) + ' img/s'; } }
  ];

  var specByKey = {};
  SPECS.forEach(function (s) { specByKey[s.key] = s; });

  // ------------------------------------------------------------------- store
  // key -> { steps: [], values: [], wall_times: [], epochs: [] }, sorted by step,
  // one entry per step.

  var store = {};
  var dirty = {};

  function emptySeries() { return { steps: [], values: [], wall_times: [], epochs: [] }; }

  function seriesFor(key) {
    return store[key] || (store[key] = emptySeries());
  }

  // Index of the first element >= step.
  function lowerBound(arr, step) {
    var lo = 0, hi = arr.length;
    while (lo < hi) {
      var mid = (lo + hi) >>> 1;
      if (arr[mid] < step) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  function upsert(s, step, value, wallTime, epoch) {
    var n = s.steps.length;
    if (n === 0 || step > s.steps[n - 1]) {
      s.steps.push(step); s.values.push(value); s.wall_times.push(wallTime); s.epochs.push(epoch);
      return;
    }
    var i = lowerBound(s.steps, step);
    if (s.steps[i] === step) {
      s.values[i] = value; s.wall_times[i] = wallTime; s.epochs[i] = epoch;
    } else {
      s.steps.splice(i, 0, step); s.values.splice(i, 0, value);
      s.wall_times.splice(i, 0, wallTime); s.epochs.splice(i, 0, epoch);
    }
  }

  // Finite number or null (null plots as a gap).
  function toNum(v) {
    if (v === null || v === undefined || v === '') return null;
    var n = Number(v);
    return isFinite(n) ? n : null;
  }

  function replaceAll(metrics) {
    var old = store;
    store = {};
    Object.keys(old).forEach(function (k) { dirty[k] = true; });
    if (metrics && typeof metrics === 'object') {
      Object.keys(metrics).forEach(function (key) {
        var m = metrics[key] || {};
        var steps = m.steps || [];
        var values = m.values || [];
        var walls = m.wall_times || [];
        var epochs = m.epochs || [];
        var s = seriesFor(key);
        for (var i = 0; i < steps.length; i++) {
          var step = toNum(steps[i]);
          if (step == null) continue;
          upsert(s, step, toNum(values[i]), toNum(walls[i]), toNum(epochs[i]));
        }
        dirty[key] = true;
      });
    }
    scheduleDraw();
  }

  function appendPoints(points) {
    if (!Array.isArray(points)) return;
    for (var i = 0; i < points.length; i++) {
      var p = points[i];
      if (!p || typeof p.key !== 'string') continue;
      var step = toNum(p.step);
      if (step == null) continue;
      upsert(seriesFor(p.key), step, toNum(p.value), toNum(p.wall_time), toNum(p.epoch));
      dirty[p.key] = true;
    }
    scheduleDraw();
  }

  // ------------------------------------------------------------------ charts

  var charts = {};
  var cards = {};
  var chartsEl = document.getElementById('charts');

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function buildCard(spec) {
    var card = el('section', 'card chart-card');
    card.setAttribute('data-key', spec.key);
    var head = el('header', 'chart-head');
    var title = el('h2', 'chart-title', spec.title);
    var last = el('span', 'chart-last', '—');
    last.title = 'Latest value';
    head.appendChild(title);
    head.appendChild(last);
    card.appendChild(head);
    if (spec.caption) card.appendChild(el('p', 'chart-caption', spec.caption));
    var body = el('div', 'chart-body');
    var plot = el('div', 'chart-plot');
    var empty = el('div', 'chart-empty', 'Waiting for data…');
    body.appendChild(plot);
    body.appendChild(empty);
    card.appendChild(body);
    chartsEl.appendChild(card);
    return { card: card, last: last, plot: plot, empty: empty };
  }

  function yRange(spec) {
    return function (u, min, max) {
      if (min == null || max == null || !isFinite(min) || !isFinite(max)) {
        if (spec.emptyRange) return spec.emptyRange.slice();
        return spec.reference != null ? [0, spec.reference * 1.5] : [0, 1];
      }
      if (spec.zeroBased) {
        var top = Math.max(max, spec.reference || 0);
        if (top <= 0) top = 1;
        return [Math.min(0, min), top * 1.1];
      }
      if (min === max) {
        var pad = Math.abs(min) * 0.1 || 1;
        return [min - pad, max + pad];
      }
      var span = max - min;
      return [min - span * 0.08, max + span * 0.08];
    };
  }

  function makeChart(spec, parts) {
    var series = [
      { label: 'step', value: function (u, v) { return v == null ? '—' : fmtInt(v); } },
      {
        label: spec.label,
        stroke: spec.color,
        width: 2,
        fill: spec.fill || undefined,
        spanGaps: true,
        value: function (u, v) { return v == null ? '—' : (spec.last ? spec.last(v) : fmtNum(v)); }
      }
    ];
    if (spec.points) series[1].points = { show: true, size: 6 };
    if (spec.reference != null) {
      series.push({
        label: spec.referenceLabel || '1/√d (healthy)',
        stroke: '#64748b',
        width: 1.5,
        dash: [6, 5],
        points: { show: false },
        value: function () { return fmtNum(spec.reference); }
      });
    }
    var axisStyle = {
      stroke: '#475569',
      grid: { stroke: 'rgba(15,23,42,0.07)', width: 1 },
      ticks: { stroke: 'rgba(15,23,42,0.15)', width: 1, size: 4 },
      font: '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'
    };
    var opts = {
      width: Math.max(200, parts.plot.clientWidth || 400),
      height: CHART_HEIGHT,
      pxAlign: 0,
      cursor: { sync: { key: 'pretext-run-' + runId }, drag: { x: true, y: false } },
      legend: { show: true, live: true },
      scales: { x: { time: false }, y: { range: yRange(spec) } },
      axes: [
        Object.assign({}, axisStyle, {
          label: 'step', labelSize: 18, labelFont: axisStyle.font, size: 32,
          values: function (u, splits) { return splits.map(fmtAxis); }
        }),
        Object.assign({}, axisStyle, {
          size: 56,
          values: function (u, splits) { return splits.map(spec.axis || fmtAxis); }
        })
      ],
      series: series
    };
    var data = spec.reference != null ? [[], [], []] : [[], []];
    return new uPlot(opts, data, parts.plot);
  }

  SPECS.forEach(function (spec) {
    var parts = buildCard(spec);
    cards[spec.key] = parts;
    charts[spec.key] = makeChart(spec, parts);
  });

  function chartData(key) {
    var spec = specByKey[key];
    var s = store[key] || emptySeries();
    var xs = s.steps.slice();
    var ys = spec.map ? s.values.map(function (v) { return v == null ? null : spec.map(v); }) : s.values.slice();
    var data = [xs, ys];
    if (spec.reference != null) {
      data.push(xs.map(function () { return spec.reference; }));
    }
    return data;
  }

  function addChart(spec) {
    specByKey[spec.key] = spec;
    var parts = buildCard(spec);
    cards[spec.key] = parts;
    charts[spec.key] = makeChart(spec, parts);
    if (typeof ro !== 'undefined' && ro) ro.observe(parts.card);
  }

  function updateLast(key) {
    var spec = specByKey[key];
    var parts = cards[key];
    var s = store[key];
    var n = s ? s.steps.length : 0;
    if (spec.warnAbove != null) {
      var latest = n ? s.values[n - 1] : null;
      parts.card.classList.toggle('chart-warn', latest != null && latest > spec.warnAbove);
    }
    parts.empty.hidden = n > 0;
    parts.card.classList.toggle('is-empty', n === 0);
    if (n === 0) { parts.last.textContent = '—'; parts.last.title = 'Latest value'; return; }
    var v = s.values[n - 1];
    if (v != null && spec.map) v = spec.map(v);
    parts.last.textContent = v == null ? '—' : (spec.last ? spec.last(v) : fmtNum(v));
    parts.last.title = 'Latest value, step ' + fmtInt(s.steps[n - 1]);
  }

  // Redraws are coalesced into one per animation frame; a timer backs up
  // requestAnimationFrame for hidden tabs, where frames do not fire.
  var drawScheduled = false, rafId = 0, timerId = 0;

  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    rafId = window.requestAnimationFrame ? window.requestAnimationFrame(flush) : 0;
    timerId = window.setTimeout(flush, 250);
  }

  function flush() {
    if (!drawScheduled) return;
    drawScheduled = false;
    if (rafId && window.cancelAnimationFrame) window.cancelAnimationFrame(rafId);
    window.clearTimeout(timerId);
    var keys = Object.keys(dirty);
    dirty = {};
    keys.forEach(function (key) {
      if (!charts[key]) {
        // Any other metric a method reports (e.g. train/byol/tau) gets a chart too.
        if (!store[key] || !store[key].steps.length) return;
        addChart({ key: key, title: key, label: key.split('/').pop(), color: '#475569', fill: null, last: fmtNum });
      }
      charts[key].setData(chartData(key));
      updateLast(key);
    });
  }

  // Resize charts with their container.
  function resizeChart(key) {
    var u = charts[key], plot = cards[key].plot;
    var w = Math.floor(plot.clientWidth);
    if (w > 0 && Math.abs(w - u.width) >= 1) u.setSize({ width: w, height: CHART_HEIGHT });
  }

  // Resizing happens on the next frame, not inside the observer callback, so a
  // legend that re-wraps cannot trigger a "ResizeObserver loop" error.
  var pendingResize = {}, resizeFrame = 0, resizeTimer = 0;
  function flushResize() {
    if (resizeFrame && window.cancelAnimationFrame) window.cancelAnimationFrame(resizeFrame);
    window.clearTimeout(resizeTimer);
    resizeFrame = 0; resizeTimer = 0;
    var keys = Object.keys(pendingResize);
    pendingResize = {};
    keys.forEach(resizeChart);
  }

  if (window.ResizeObserver) {
    var ro = new ResizeObserver(function (entries) {
      entries.forEach(function (entry) {
        var key = entry.target.getAttribute('data-key');
        if (key && charts[key]) pendingResize[key] = true;
      });
      if (!resizeTimer) {
        // A timer backs up the frame callback in hidden tabs.
        resizeFrame = window.requestAnimationFrame ? window.requestAnimationFrame(flushResize) : 0;
        resizeTimer = window.setTimeout(flushResize, 100);
      }
    });
    SPECS.forEach(function (s) { ro.observe(cards[s.key].card); });
  } else {
    window.addEventListener('resize', function () {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () { SPECS.forEach(function (s) { resizeChart(s.key); }); }, 100);
    });
  }

  // --------------------------------------------------------- run + progress

  var statusEl = document.getElementById('run-status');
  var errorEl = document.getElementById('run-error');
  var cancelBtn = document.getElementById('cancel-run');
  var actionAlert = document.getElementById('action-alert');
  var deviceEl = document.getElementById('run-device');
  var nameEl = document.getElementById('run-name');
  var progressEl = document.getElementById('progress');
  var progressBar = document.getElementById('progress-bar');
  var progressText = document.getElementById('progress-text');
  var progressEta = document.getElementById('progress-eta');

  var currentStatus = root.getAttribute('data-status') || '';
  var currentRun = null;
  var progress = null;          // { step, total_steps, epoch, epochs }
  var samples = [];             // [{ t: seconds (browser clock), step }]
  var ETA_WINDOW_S = 60;

  function isTerminal() { return TERMINAL[currentStatus] === true; }

  function setText(elem, text) { if (elem && elem.textContent !== text) elem.textContent = text; }

  function applyStatus(status) {
    if (!status) return;
    currentStatus = String(status);
    root.setAttribute('data-status', currentStatus);
    if (statusEl) {
      statusEl.className = statusEl.className.replace(/\bstatus-[\w-]+/g, '').trim() + ' status-' + currentStatus;
      setText(statusEl, currentStatus);
    }
    if (cancelBtn) cancelBtn.hidden = !(currentStatus === 'queued' || currentStatus === 'running');
    renderProgress();
  }

  function applyRun(run) {
    if (!run || typeof run !== 'object') return;
    currentRun = run;
    if (run.name != null) { setText(nameEl, String(run.name)); }
    if (run.device != null && run.device !== '') setText(deviceEl, String(run.device));
    [['run-created', run.created_at], ['run-started', run.started_at], ['run-finished', run.finished_at]].forEach(function (pair) {
      var dd = document.getElementById(pair[0]);
      if (!dd) return;
      setText(dd, fmtTime(pair[1]));
      dd.title = pair[1] == null ? '' : String(pair[1]);
    });
    if (errorEl) {
      var err = run.error == null ? '' : String(run.error);
      setText(errorEl, err);
      errorEl.hidden = err === '';
    }
    // A run that has not started reports { step: 0, total_steps: 0, ... }.
    var rp = run.progress;
    if (rp && (toNum(rp.total_steps) > 0 || toNum(rp.step) > 0)) applyProgress(rp);
    applyStatus(run.status);
  }

  // ETA: steps per second over the last minute, timed by the browser's clock.
  function applyProgress(p) {
    if (!p) return;
    var step = toNum(p.step);
    if (step == null) return;
    var now = performance.now() / 1000;
    var last = samples.length ? samples[samples.length - 1] : null;
    if (last && step < last.step) { samples = []; last = null; }   // replayed or restarted
    if (!last || step > last.step) samples.push({ t: now, step: step });
    while (samples.length > 2 && now - samples[0].t > ETA_WINDOW_S) samples.shift();
    if (samples.length > 200) samples.splice(0, samples.length - 200);
    progress = {
      step: step,
      total_steps: toNum(p.total_steps),
      epoch: toNum(p.epoch),
      epochs: toNum(p.epochs)
    };
    renderProgress();
  }

  function stepRate() {
    if (samples.length < 2) return null;
    var a = samples[0], b = samples[samples.length - 1];
    var dt = b.t - a.t;
    if (dt < 0.5 || b.step <= a.step) return null;
    return (b.step - a.step) / dt;
  }

  function elapsedText() {
    if (!currentRun || !currentRun.started_at || !currentRun.finished_at) return '';
    var da = parseTime(currentRun.started_at), db = parseTime(currentRun.finished_at);
    if (!da || !db) return '';
    var a = da.getTime(), b = db.getTime();
    if (b < a) return '';
    return 'took ' + fmtDuration((b - a) / 1000);
  }

  function renderProgress() {
    if (!progressBar) return;
    var pct = 0;
    if (progress && progress.total_steps > 0) {
      pct = Math.max(0, Math.min(100, (progress.step / progress.total_steps) * 100));
    }
    if (currentStatus === 'completed') pct = 100;
    progressBar.style.width = pct.toFixed(2) + '%';
    progressEl.setAttribute('aria-valuenow', String(Math.round(pct)));
    progressEl.classList.toggle('is-running', currentStatus === 'running');
    progressEl.setAttribute('data-status', currentStatus);

    if (!progress) {
      setText(progressText, currentStatus === 'queued' ? 'Queued — waiting for a worker…'
        : isTerminal() ? 'No progress recorded' : 'Waiting for progress…');
      setText(progressEta, '');
      return;
    }
    var parts = ['Step ' + fmtInt(progress.step) + ' / ' + (progress.total_steps > 0 ? fmtInt(progress.total_steps) : '?')];
    if (progress.epochs > 0 && progress.epoch != null) {
      var ep = Math.min(progress.epoch + 1, progress.epochs);
      parts.push('epoch ' + ep + ' / ' + progress.epochs);
    }
    parts.push(Math.floor(pct) + '%');
    setText(progressText, parts.join(' · '));

    if (currentStatus !== 'running') {
      setText(progressEta, isTerminal() ? elapsedText() : '');
      return;
    }
    var rate = stepRate();
    if (rate == null || !(progress.total_steps > 0)) {
      setText(progressEta, 'ETA estimating…');
    } else {
      var remaining = Math.max(0, progress.total_steps - progress.step) / rate;
      setText(progressEta, 'ETA ' + fmtDuration(remaining) + ' · ' + (rate >= 10 ? rate.toFixed(0) : rate.toFixed(2)) + ' steps/s');
    }
  }

  // ------------------------------------------------------------- checkpoints

  var cpBody = document.getElementById('checkpoints-body');
  var cpEmpty = document.getElementById('checkpoints-empty');

  function findCheckpointRow(name) {
    var rows = cpBody ? cpBody.querySelectorAll('tr[data-name]') : [];
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute('data-name') === name) return rows[i];
    }
    return null;
  }

  function addCheckpoint(cp) {
    if (!cp || !cp.name || !cpBody) return;
    var name = String(cp.name);
    var row = findCheckpointRow(name);
    var fresh = !row;
    if (!row) {
      row = document.createElement('tr');
      row.setAttribute('data-name', name);
    }
    row.textContent = '';
    var url = cp.url || ('/api/runs/' + encodeURIComponent(runId) + '/checkpoints/' + encodeURIComponent(name));

    var td1 = el('td');
    var a = el('a', 'mono', name);
    a.href = url;
    a.setAttribute('download', name);
    td1.appendChild(a);

    var td2 = el('td', 'num nowrap', cp.size || fmtBytes(toNum(cp.bytes)));
    if (cp.bytes != null) td2.title = cp.bytes + ' bytes';

    var td3 = el('td');
    var code = el('code', 'hash', cp.sha256 || '—');
    if (cp.sha256) code.title = cp.sha256;
    td3.appendChild(code);

    var td4 = el('td', 'nowrap muted', cp.created_at ? String(cp.created_at) : '—');

    row.appendChild(td1); row.appendChild(td2); row.appendChild(td3); row.appendChild(td4);
    if (fresh) {
      cpBody.insertBefore(row, cpEmpty || null);
      row.classList.add('row-new');
      window.setTimeout(function () { row.classList.remove('row-new'); }, 2500);
    }
    if (cpEmpty) cpEmpty.hidden = true;
  }

  // ------------------------------------------------------------------ cancel

  function showActionError(msg) {
    if (!actionAlert) return;
    actionAlert.textContent = msg;
    actionAlert.hidden = !msg;
  }

  if (cancelBtn) {
    cancelBtn.addEventListener('click', function () {
      cancelBtn.disabled = true;
      var label = cancelBtn.textContent;
      cancelBtn.textContent = 'Cancelling…';
      showActionError('');
      fetch('/api/runs/' + encodeURIComponent(runId) + '/cancel', {
        method: 'POST',
        headers: { 'Accept': 'application/json' }
      }).then(function (res) {
        return res.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!res.ok) {
            var msg = body && body.error && body.error.message ? body.error.message
              : ('Cancel failed (HTTP ' + res.status + ')');
            throw new Error(msg);
          }
          if (body && body.status) applyRun(body);
          else if (body && body.run && body.run.status) applyRun(body.run);
          // 202: a running run stops within a step; the status message that
          // follows hides the button. Until then it stays "Cancelling…".
          return res.status === 202 && !isTerminal();
        });
      }).catch(function (err) {
        showActionError(err && err.message ? err.message : 'Cancel failed');
        return false;
      }).then(function (pending) {
        if (pending) return;
        cancelBtn.disabled = false;
        cancelBtn.textContent = label;
      });
    });
  }

  // --------------------------------------------------------------- websocket

  var liveEl = document.getElementById('live-indicator');
  var ws = null;
  var reconnectTimer = 0;
  var attempts = 0;
  var waiting = false;   // waiting to reconnect

  function setLive(state, text) {
    if (!liveEl) return;
    // A finished run streams nothing more: say so instead of a green "live".
    if (isTerminal() && state === 'open') { state = 'closed'; text = 'finished'; }
    liveEl.setAttribute('data-state', state);
    setText(liveEl, text || state);
  }

  function liveUrl() {
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return proto + '//' + location.host + '/api/runs/' + encodeURIComponent(runId) + '/live';
  }

  function handleMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'snapshot':
        attempts = 0;
        if (msg.run) applyRun(msg.run);
        replaceAll(msg.metrics);
        // Checkpoints written while the socket was down arrive with the snapshot.
        if (Array.isArray(msg.checkpoints)) msg.checkpoints.forEach(addCheckpoint);
        break;
      case 'points':
        appendPoints(msg.points);
        break;
      case 'progress':
        applyProgress(msg);
        break;
      case 'status':
        if (msg.run) applyRun(msg.run);
        break;
      case 'checkpoint':
        addCheckpoint(msg.checkpoint);
        break;
      case 'lagged':
        setLive('open', 'catching up');
        break;
      default:
        break;
    }
    if (msg.type !== 'lagged' && ws && ws.readyState === 1) setLive('open', 'live');
  }

  function connect() {
    waiting = false;
    reconnectTimer = 0;
    var sock;
    try {
      sock = new WebSocket(liveUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    setLive('connecting', attempts > 0 ? 'reconnecting' : 'connecting');
    sock.onopen = function () {
      if (ws !== sock) return;
      setLive('open', 'live');
    };
    sock.onmessage = function (ev) {
      if (ws !== sock) return;
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      try { handleMessage(msg); } catch (e) { if (window.console) console.error('pretext: bad message', e, msg); }
    };
    sock.onerror = function () { /* close follows */ };
    sock.onclose = function () {
      if (ws !== sock) return;
      ws = null;
      if (isTerminal()) {
        setLive('closed', 'finished');
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (reconnectTimer || isTerminal()) return;
    attempts++;
    var delay = Math.min(15000, 500 * Math.pow(2, Math.min(attempts - 1, 5)));
    delay = delay * (0.75 + Math.random() * 0.5);
    waiting = true;
    setLive('closed', 'reconnecting in ' + Math.ceil(delay / 1000) + 's');
    reconnectTimer = window.setTimeout(connect, delay);
  }

  // Reconnect at once when the tab comes back or the network returns.
  function reconnectNow() {
    if (waiting && reconnectTimer && !isTerminal()) {
      window.clearTimeout(reconnectTimer);
      connect();
    }
  }
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') reconnectNow();
  });
  window.addEventListener('online', reconnectNow);

  // Keep the ETA ticking between progress messages.
  window.setInterval(function () { if (currentStatus === 'running') renderProgress(); }, 1000);

  // ----------------------------------------------------------------- test hook

  var STATES = ['connecting', 'open', 'closing', 'closed'];

  window.pretext = {
    charts: charts,
    // Points plotted for `key` (any pending redraw is applied first); for keys
    // without a chart, the points received.
    pointCount: function (key) {
      flush();
      if (charts[key]) return charts[key].data[0].length;
      var s = store[key];
      return s ? s.steps.length : 0;
    },
    socketState: function () {
      return ws ? (STATES[ws.readyState] || 'closed') : 'closed';
    },
    run: function () { return currentRun; }
  };

  renderProgress();
  connect();
})();

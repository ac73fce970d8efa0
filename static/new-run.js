// New-run form: friendly inputs kept in sync with the full JSON config, which
// is what gets submitted (POST /api/runs). Inputs are named by JSON path, so a
// server error's `field` names the input to highlight.
(function () {
  'use strict';

  var form = document.getElementById('new-run-form');
  if (!form) return;

  var textarea = document.getElementById('config-json');
  var details = document.getElementById('config-details');
  var jsonStatus = document.getElementById('config-json-status');
  var alertBox = document.getElementById('form-alert');
  var submitBtn = document.getElementById('submit-run');
  var resetBtn = document.getElementById('reset-config');
  var defaultText = textarea.defaultValue || textarea.value;

  // Friendly inputs: every control with a JSON-path name and a data-kind.
  var inputs = Array.prototype.slice.call(form.querySelectorAll('[name][data-kind]'));

  // ------------------------------------------------------------ path helpers

  function getPath(obj, path) {
    var parts = path.split('.');
    var cur = obj;
    for (var i = 0; i < parts.length; i++) {
      if (cur == null || typeof cur !== 'object') return undefined;
      cur = cur[parts[i]];
    }
    return cur;
  }

  function setPath(obj, path, value) {
    var parts = path.split('.');
    var cur = obj;
    for (var i = 0; i < parts.length - 1; i++) {
      if (cur[parts[i]] == null || typeof cur[parts[i]] !== 'object' || Array.isArray(cur[parts[i]])) {
        cur[parts[i]] = {};
      }
      cur = cur[parts[i]];
    }
    cur[parts[parts.length - 1]] = value;
  }

  function deletePath(obj, path) {
    var parts = path.split('.');
    var cur = obj;
    for (var i = 0; i < parts.length - 1; i++) {
      if (cur == null || typeof cur !== 'object') return;
      cur = cur[parts[i]];
    }
    if (cur && typeof cur === 'object') delete cur[parts[parts.length - 1]];
  }

  // -------------------------------------------------------------- JSON state

  function parseConfig() {
    try {
      var obj = JSON.parse(textarea.value);
      if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
        return { error: 'the config must be a JSON object' };
      }
      return { value: obj };
    } catch (e) {
      return { error: e.message };
    }
  }

  function setJsonStatus(msg) {
    jsonStatus.textContent = msg || '';
    jsonStatus.hidden = !msg;
    textarea.classList.toggle('is-invalid', !!msg);
    if (msg) textarea.setAttribute('aria-invalid', 'true'); else textarea.removeAttribute('aria-invalid');
  }

  // JSON -> friendly inputs.
  function fillInputs(obj) {
    inputs.forEach(function (input) {
      if (input === document.activeElement) return;
      var v = getPath(obj, input.name);
      if (input.tagName === 'SELECT') {
        var wanted = v == null ? '' : String(v);
        var has = Array.prototype.some.call(input.options, function (o) { return o.value === wanted; });
        if (!has && wanted !== '') {
          var opt = document.createElement('option');
          opt.value = wanted;
          opt.textContent = wanted;
          input.appendChild(opt);
        }
        if (has || wanted !== '') input.value = wanted;
      } else if (v == null || typeof v === 'object') {
        input.value = '';
      } else {
        input.value = String(v);
      }
    });
  }

  // One friendly input -> JSON. Returns false when the input holds nothing usable.
  function readInput(input) {
    var kind = input.getAttribute('data-kind');
    var raw = input.value;
    if (kind === 'string' || kind === 'enum') return { value: raw };
    if (input.validity && input.validity.badInput) return { bad: true };
    var text = String(raw).trim();
    if (text === '') {
      if (input.hasAttribute('data-nullable')) return { value: null };
      return { remove: true };     // the server's default applies
    }
    var n = Number(text);
    if (!isFinite(n)) return { bad: true };
    return { value: n };
  }

  function onInputChanged(input) {
    clearFieldError(input);
    var parsed = parseConfig();
    if (parsed.error) {
      setJsonStatus('Fix the JSON below before editing fields: ' + parsed.error);
      openDetails();
      return;
    }
    var r = readInput(input);
    if (r.bad) {
      markInvalid(input, 'Not a number.');
      return;
    }
    if (r.remove) deletePath(parsed.value, input.name);
    else setPath(parsed.value, input.name, r.value);
    textarea.value = JSON.stringify(parsed.value, null, 2);
    setJsonStatus('');
  }

  function onJsonChanged() {
    clearFieldError(textarea);
    var parsed = parseConfig();
    if (parsed.error) {
      setJsonStatus('Invalid JSON: ' + parsed.error);
      return;
    }
    setJsonStatus('');
    fillInputs(parsed.value);
  }

  // ---------------------------------------------------------------- errors

  function openDetails() { if (details && !details.open) details.open = true; }

  function showAlert(msg) {
    alertBox.textContent = msg;
    alertBox.hidden = !msg;
  }

  function clearFieldError(input) {
    if (!input) return;
    input.classList.remove('is-invalid');
    input.removeAttribute('aria-invalid');
    var field = input.closest('.field');
    var note = field && field.querySelector('.field-error[data-for]');
    if (note) note.remove();
  }

  function clearAllErrors() {
    showAlert('');
    inputs.forEach(clearFieldError);
    textarea.classList.remove('is-invalid');
    textarea.removeAttribute('aria-invalid');
  }

  function markInvalid(input, message) {
    input.classList.add('is-invalid');
    input.setAttribute('aria-invalid', 'true');
    var field = input.closest('.field');
    if (field && message) {
      var note = field.querySelector('.field-error[data-for]');
      if (!note) {
        note = document.createElement('p');
        note.className = 'field-error';
        note.setAttribute('data-for', input.name);
        field.appendChild(note);
      }
      note.textContent = message;
    }
  }

  // Select `"key"` for the last segment of a JSON path in the textarea.
  function selectInJson(path) {
    var segs = String(path).split('.');
    var last = segs[segs.length - 1].replace(/\[\d+\]$/, '');
    var text = textarea.value;
    var from = 0;
    // Walk the path so `data.path` doesn't stop at some other "path" key.
    for (var i = 0; i < segs.length; i++) {
      var idx = text.indexOf('"' + segs[i].replace(/\[\d+\]$/, '') + '"', from);
      if (idx < 0) break;
      from = idx;
    }
    var at = text.indexOf('"' + last + '"', from);
    if (at >= 0) {
      try { textarea.setSelectionRange(at, at + last.length + 2); } catch (e) { /* ignore */ }
    }
  }

  function highlightField(field, message) {
    if (!field) return;
    var target = null;
    for (var i = 0; i < form.elements.length; i++) {
      if (form.elements[i].name === field) { target = form.elements[i]; break; }
    }
    if (target && target !== textarea) {
      markInvalid(target, message);
      target.focus();
      if (target.scrollIntoView) target.scrollIntoView({ block: 'center', behavior: 'smooth' });
      return;
    }
    // Not one of the friendly inputs: point at it in the JSON.
    openDetails();
    textarea.classList.add('is-invalid');
    textarea.setAttribute('aria-invalid', 'true');
    textarea.focus();
    if (field !== 'config') selectInJson(field);
  }

  // ---------------------------------------------------------------- submit

  var submitting = false;

  function setBusy(busy) {
    submitting = busy;
    submitBtn.disabled = busy;
    submitBtn.textContent = busy ? 'Starting…' : 'Start run';
    form.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    if (submitting) return;
    clearAllErrors();

    var parsed = parseConfig();
    if (parsed.error) {
      setJsonStatus('Invalid JSON: ' + parsed.error);
      showAlert('The full config is not valid JSON: ' + parsed.error);
      highlightField('config');
      return;
    }

    setBusy(true);
    fetch('/api/runs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: textarea.value
    }).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (res.ok && body && body.id != null) {
          window.location.assign('/runs/' + encodeURIComponent(body.id));
          return;   // stay busy while navigating
        }
        setBusy(false);
        if (res.ok) {
          showAlert('The server accepted the run but did not return its id.');
          return;
        }
        var err = body && body.error ? body.error : null;
        var msg = err && err.message ? err.message
          : ('The server refused the run (HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '') + ').' +
             (text && !body ? ' ' + text.slice(0, 300) : ''));
        showAlert(msg);
        if (err && err.field) highlightField(String(err.field), msg);
        else alertBox.scrollIntoView && alertBox.scrollIntoView({ block: 'center', behavior: 'smooth' });
      });
    }).catch(function (e) {
      setBusy(false);
      showAlert('Could not reach the server: ' + (e && e.message ? e.message : e));
    });
  });

  // ---------------------------------------------------------------- wiring

  inputs.forEach(function (input) {
    var evt = input.tagName === 'SELECT' ? 'change' : 'input';
    input.addEventListener(evt, function () { onInputChanged(input); });
  });
  textarea.addEventListener('input', onJsonChanged);

  if (resetBtn) {
    resetBtn.addEventListener('click', function () {
      textarea.value = defaultText;
      clearAllErrors();
      onJsonChanged();
    });
  }

  // Initial fill from the default config (or what the browser restored).
  onJsonChanged();
})();

// The page at /: plain JavaScript over the gateway's own API (same origin, no framework).
'use strict';

const $ = (id) => document.getElementById(id);
const JOBS_KEY = 'conveyor.jobs';
const KEY_KEY = 'conveyor.apiKey';

function headers(extra) {
  const h = new Headers(extra || {});
  const key = $('api-key').value.trim();
  if (key) h.set('authorization', `Bearer ${key}`);
  return h;
}

async function api(path, init) {
  const response = await fetch(path, { ...init, headers: headers(init && init.headers) });
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json() : await response.text();
  return { status: response.status, body, problem: type.includes('problem+json') ? body : undefined };
}

function showProblem(problem) {
  $('result').hidden = true;
  $('problem').hidden = false;
  $('problem-title').textContent = problem.title || 'Something went wrong';
  $('problem-detail').textContent = problem.detail || '';
}

function percent(x) {
  return `${(x * 100).toFixed(x > 0.999 || x < 0.001 ? 2 : 1)} %`;
}

function showResult(result) {
  $('problem').hidden = true;
  $('result').hidden = false;
  $('result-label').textContent = result.prediction.label;
  const top = $('top');
  top.replaceChildren(
    ...result.prediction.top.map((entry) => {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.textContent = entry.label;
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.setAttribute('role', 'img');
      bar.setAttribute('aria-label', `confidence ${percent(entry.confidence)}`);
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0.5, entry.confidence * 100)}%`;
      bar.append(fill);
      const value = document.createElement('span');
      value.textContent = percent(entry.confidence);
      li.append(name, bar, value);
      return li;
    }),
  );
  const timings = $('timings');
  timings.replaceChildren();
  for (const [name, ms] of Object.entries(result.timings)) {
    const dt = document.createElement('dt');
    dt.textContent = name.replace(/Ms$/, '');
    const dd = document.createElement('dd');
    dd.textContent = `${ms} ms`;
    timings.append(dt, dd);
  }
}

async function loadModels() {
  const { status, body, problem } = await api('/v1/models');
  const select = $('model');
  if (status !== 200) {
    if (problem) showProblem(problem);
    return;
  }
  select.replaceChildren(
    ...body.models.map((m) => {
      const option = document.createElement('option');
      option.value = m.name;
      option.textContent = `${m.name}${m.default ? ' (default)' : ''}${m.ready ? '' : ' — no worker yet'}`;
      option.selected = m.default;
      return option;
    }),
  );
}

// ---- the browser's recent asynchronous jobs, followed over Server-Sent Events
function loadJobs() {
  try {
    return JSON.parse(localStorage.getItem(JOBS_KEY) || '[]');
  } catch {
    return [];
  }
}
function saveJobs(jobs) {
  localStorage.setItem(JOBS_KEY, JSON.stringify(jobs.slice(0, 10)));
}
function renderJobs() {
  $('jobs').replaceChildren(
    ...loadJobs().map((job) => {
      const li = document.createElement('li');
      li.dataset.job = job.id;
      const state = document.createElement('span');
      state.className = `state-${job.status}`;
      state.textContent = job.status;
      li.append(`${job.model} · ${job.id.slice(0, 8)} · `, state, job.label ? ` · ${job.label}` : '');
      return li;
    }),
  );
}
function updateJob(id, change) {
  saveJobs(loadJobs().map((job) => (job.id === id ? { ...job, ...change } : job)));
  renderJobs();
}

// EventSource cannot send an API key: the stream is read over fetch instead.
async function follow(id) {
  for (let attempt = 0; attempt < 30; attempt++) {
    let response;
    try {
      response = await fetch(`/v1/jobs/${id}/events`, { headers: headers({ accept: 'text/event-stream' }) });
    } catch {
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (response.status === 404) return updateJob(id, { status: 'expired' });
    if (!response.ok || !response.body) {
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = (/^event: (.*)$/m.exec(block) || [])[1];
        const data = (/^data: (.*)$/m.exec(block) || [])[1];
        if (!data) continue;
        const body = JSON.parse(data);
        if (event === 'state') updateJob(id, { status: body.status });
        if (event === 'result') {
          updateJob(id, { status: body.status, label: body.prediction ? body.prediction.label : body.error && body.error.title });
          return;
        }
      }
    }
  }
}

// ---- drift, as the monitor reports it
async function loadDrift() {
  const { status, body } = await api('/v1/drift');
  const list = $('drift');
  if (status !== 200) {
    list.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'The monitor cannot be reached now.' }));
    return;
  }
  if (!body.monitor) {
    list.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'No monitor is configured (MONITOR_URL).' }));
    return;
  }
  if (body.models.length === 0) {
    list.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'No predictions monitored yet.' }));
    return;
  }
  list.replaceChildren(
    ...body.models.map((m) => {
      const li = document.createElement('li');
      const level = document.createElement('span');
      level.className = `level-${m.level}`;
      level.textContent = m.level;
      const drifting = Object.entries(m.features)
        .filter(([, l]) => l !== 'ok')
        .map(([f, l]) => `${f} ${l}`);
      li.append(`${m.model}@${m.version}: `, level, ` · window ${m.window}${drifting.length ? ` · ${drifting.join(', ')}` : ''}`);
      return li;
    }),
  );
  // Beside drift: each shadow version's agreement with production (SHADOW_VERSION on the workers).
  $('shadows').replaceChildren(
    ...(body.shadows ?? []).map((s) => {
      const li = document.createElement('li');
      const agreement = s.agreement === null ? 'no pairs yet' : `${(s.agreement * 100).toFixed(1)} % agreement`;
      const window =
        s.window.status === 'closed'
          ? `last window of ${s.window.size} pairs`
          : `${s.window.size} pairs so far${s.window.status === 'insufficient_data' ? ', too few to judge' : ''}`;
      li.textContent = `${s.model} shadow ${s.shadowVersion} beside ${s.productionVersion}: ${agreement} (${window})`;
      return li;
    }),
  );
}

// ---- the form
async function submit(event) {
  event.preventDefault();
  const file = $('file').files[0];
  const url = $('url').value.trim();
  const model = $('model').value;
  const async = $('async').checked;
  const init = { method: 'POST', headers: {} };
  if (async) init.headers.prefer = 'respond-async';
  if (file) {
    const form = new FormData();
    form.append('file', file, file.name);
    init.body = form;
  } else if (url) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify({ url });
  } else {
    showProblem({ title: 'Choose an image first', detail: 'Pick or drop a file, or paste an image URL.' });
    return;
  }
  $('submit').disabled = true;
  try {
    const { status, body, problem } = await api(model ? `/v1/models/${encodeURIComponent(model)}/predict` : '/v1/predict', init);
    if (problem) return showProblem(problem);
    if (status === 200) return showResult(body);
    if (status === 202) {
      $('problem').hidden = true;
      saveJobs([{ id: body.id, model: body.model, status: body.status }, ...loadJobs().filter((j) => j.id !== body.id)]);
      renderJobs();
      void follow(body.id);
    }
  } catch (error) {
    showProblem({ title: 'The gateway cannot be reached', detail: String(error) });
  } finally {
    $('submit').disabled = false;
  }
}

function setUpDrop() {
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer && e.dataTransfer.files.length) {
      $('file').files = e.dataTransfer.files;
      $('drop-hint').textContent = `${e.dataTransfer.files[0].name} chosen`;
    }
  });
}

$('api-key').value = sessionStorage.getItem(KEY_KEY) || '';
$('api-key').addEventListener('change', () => {
  sessionStorage.setItem(KEY_KEY, $('api-key').value.trim());
  void loadModels();
  void loadDrift();
});
$('predict-form').addEventListener('submit', (e) => void submit(e));
setUpDrop();
renderJobs();
for (const job of loadJobs()) if (job.status === 'queued' || job.status === 'active') void follow(job.id);
void loadModels();
void loadDrift();
setInterval(() => void loadDrift(), 30_000);

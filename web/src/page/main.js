// The page: a room member in the browser on the session of ../session.js.
// Everything a peer sends (names, messages, reasons) reaches the document
// through textContent only, each inside its own <bdi> so that bidi controls
// in it cannot reorder the text around it. No inline script or style: the
// server's Content-Security-Policy forbids both.
//
// A local copy (written by `twistchat-web export`, its index.html marked with
// <meta name="twistchat-copy" content="local">) is not served by the chat
// server: it shows a Server field and connects to wss://SERVER/ws. The channel
// binding still uses the page's own origin, which the server must accept
// (--web-origin).

import { bytes as B, errors, identity as ed, kdf, session as S, transcript as T, transport } from '../index.js';
import { Store, StoredPins, identityFor } from './store.js';

const UNREADABLE = '(unreadable: sealed under an earlier room password)';
const UNSIGNED = '(unsigned: sent before identity keys)';
const UNTRUSTED = '(NOT VERIFIED: key changed)';
const HELP = [
  '/verify NAME   the safety number with NAME: compare it with them, in person or by a call',
  '/accept NAME   trust NAME\'s new identity key (after checking the new number)',
  '/safety        the room safety code: the same for everyone in the room',
  '/key           show this device\'s identity key (to vouch for it from another device)',
  '/vouch KEY [DAYS]  vouch that identity key KEY (64 hex digits) is another device of yours',
  '               in this room, for DAYS days (default 30): gives a vouch for that device',
  '/who           everyone in the room',
  '/quit          leave the room',
];

const $ = (id) => document.getElementById(id);

/** Whether this page is a local copy, which asks for the chat server's address. */
function isLocalCopy() {
  const mark = document.querySelector('meta[name="twistchat-copy"]');
  return mark !== null && mark.content === 'local';
}

/**
 * The chat server typed into the Server field, as `host:port` (port 443
 * left out), or null for something else than a host and an optional port.
 */
function serverAddress(typed) {
  const text = typed.trim().replace(/^(https|wss):\/\//i, '').replace(/\/+$/, '');
  if (!text || /[/?#@\\\s]/.test(text)) return null;
  let url;
  try {
    url = new URL(`https://${text}`);
  } catch {
    return null;
  }
  return url.host || null;
}

/** An element with text (never HTML) and optional class. */
function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (className) e.className = className;
  return e;
}

/** Text from a peer, isolated from the text around it. */
function isolated(text, className) {
  const e = el('bdi', text, className);
  e.dir = 'auto';
  return e;
}

function showTime(seconds) {
  const t = new Date(seconds * 1000);
  return [t.getHours(), t.getMinutes(), t.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/** The first 4 bytes of a key in hex: how notices name a device. */
function short(key) {
  return B.toHex(key.slice(0, 4));
}

function groups(digits) {
  return digits.split(' ');
}

class Page {
  constructor(store) {
    this.store = store;
    this.session = null;
    this.inHistory = false;
    this.countdown = null;
    this.saveTimer = null;
    // The page's own origin: bound into the login, accepted by the server.
    this.origin = location.origin;
    // The chat server's host:port: this page's own, unless a local copy.
    this.local = isLocalCopy();
    this.server = location.host;
  }

  /** Where the page's stored state is kept: per room and name (and server, for a copy). */
  placeKey(room, name) {
    return JSON.stringify(this.local ? [room, name, this.server] : [room, name]);
  }

  // --- the state line -----------------------------------------------------------------

  setState(text, kind) {
    const state = $('state');
    state.textContent = text;
    state.dataset.kind = kind;
  }

  stopCountdown() {
    if (this.countdown) clearInterval(this.countdown);
    this.countdown = null;
  }

  // --- the list of messages and notices ---------------------------------------------

  add(item) {
    const list = $('messages');
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    if (atEnd) item.scrollIntoView({ block: 'end' });
  }

  notice(text, className = 'notice') {
    this.add(el('li', text, className));
  }

  /** A notice with peer text in isolated pieces: parts are strings or [text]. */
  noticeParts(parts, className = 'notice') {
    const li = el('li', null, className);
    for (const p of parts) li.append(Array.isArray(p) ? isolated(p[0]) : p);
    this.add(li);
  }

  separator(text) {
    const li = el('li', text, 'separator');
    li.setAttribute('role', 'separator');
    this.add(li);
  }

  endHistory() {
    if (this.inHistory) {
      this.inHistory = false;
      this.separator('--- live ---');
    }
  }

  message(m, unreadable = false) {
    if (m.history) {
      if (!this.inHistory) {
        this.inHistory = true;
        this.separator('--- history ---');
      }
    } else {
      this.endHistory();
    }
    const li = el('li', null, 'message');
    if (m.history) li.classList.add('history');
    // Live messages carry no time: they are shown when they arrive.
    const at = m.time ?? Date.now() / 1000;
    const time = el('time', showTime(at));
    time.dateTime = new Date(at * 1000).toISOString();
    li.append(time, ' ');
    li.append(isolated(m.sender, 'sender'));
    if (unreadable) li.append(' ', el('span', UNREADABLE, 'mark unreadable'));
    else if (!m.signed) li.append(' ', el('span', UNSIGNED, 'mark unsigned'));
    else if (!m.trusted) li.append(' ', el('span', UNTRUSTED, 'mark changed'));
    li.append(el('span', ': ', 'colon'));
    if (!unreadable) li.append(isolated(m.text, 'text'));
    this.add(li);
  }

  // --- members --------------------------------------------------------------------

  async showMembers() {
    const s = this.session;
    const list = $('members');
    const items = [];
    const me = el('li', null, 'me');
    me.append(isolated(s.name), ' (you)');
    items.push(me);
    for (const m of [...s.members].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const li = el('li');
      li.append(isolated(m.name, 'member'));
      if (m.key && m.key.length) {
        if (await s.changedKey(m.name)) li.append(' ', el('span', 'key changed', 'mark changed'));
        const verify = el('button', 'Verify', 'small');
        verify.type = 'button';
        verify.setAttribute('aria-label', `Verify ${m.name}`);
        verify.addEventListener('click', () => this.verify(m.name));
        li.append(' ', verify);
      }
      items.push(li);
    }
    list.replaceChildren(...items);
    $('member-count').textContent = String(items.length);
  }

  // --- /verify, /accept, /safety: the "compare this" view ---------------------------

  async verify(name) {
    let number;
    try {
      number = await this.session.verify(name);
    } catch {
      this.noticeParts(['! No identity key known for ', [name]]);
      return;
    }
    const changed = (await this.session.changedKey(name)) ? ' (CHANGED: not accepted yet)' : '';
    const devices = await this.session.devices(name);
    if (devices.length === 1) {
      this.noticeParts(['* Safety number with ', [name], `${changed}: ${number}`]);
    } else {
      // One number per device: compare the one of the device name uses.
      this.noticeParts(['* Safety numbers with ', [name], `${changed}, one per device:`]);
      const inUse = this.session.inUse(name);
      for (const key of devices) {
        const mark = inUse && B.equalBytes(inUse, key) ? ' (in use)' : '';
        this.notice(`*   device ${short(key)}${mark}: ${await this.session.verify(name, key)}`);
      }
    }
    this.compare(['Safety number with ', [name]], number, [
      'Compare these 60 digits with ', [name], ', in person or on a call: ', [name],
      ' sees the same number with your name on their screen (in the terminal: /verify). ' +
      'If they differ, someone else holds one of the two keys.']);
  }

  safety() {
    const code = this.session.safety();
    this.notice(`* Room safety code: ${code} (the same for everyone with the same room key, members and keys)`);
    this.compare(['Room safety code'], code, [
      'Everyone in this room who has the same room key, members and keys sees this same code ' +
      '(in the terminal: /safety). Read it out to the others; if theirs differs, your views of ' +
      'the room differ.']);
  }

  /**
   * Open the "compare this" view. The title and the explanation are parts as
   * for noticeParts: a string is ours, [text] a peer's, isolated.
   */
  compare(title, digits, explanation) {
    const parts = (list) => list.map((p) => (Array.isArray(p) ? isolated(p[0]) : p));
    $('compare-title').replaceChildren(...parts(title));
    $('compare-digits').replaceChildren(...groups(digits).map((g) => el('span', g, 'group')));
    $('compare-text').replaceChildren(...parts(explanation));
    const dialog = $('compare');
    if (!dialog.open) dialog.showModal();
    $('compare-close').focus();
  }

  async accept(name) {
    if (await this.session.accept(name)) {
      this.noticeParts(['* ', [name], "'s new identity key is now trusted."]);
      await this.showMembers();
    } else {
      this.noticeParts(['! No changed key waits to be accepted for ', [name]]);
    }
  }

  /** Make a vouch for the device whose key is `keyHex` and show it to copy. */
  async vouch(keyHex, daysText) {
    let key;
    let days;
    let vouch;
    try {
      if (!/^[0-9a-fA-F]{64}$/.test(keyHex)) throw new RangeError('KEY must be 64 hex digits');
      days = daysText === undefined || daysText === '' ? S.VOUCH_DAYS : Number(daysText);
      key = B.fromHex(keyHex.toLowerCase());
      vouch = await this.session.vouchFor(key, days);
    } catch (e) {
      this.notice(`! Cannot vouch: ${e.message}`, 'notice warning');
      return;
    }
    this.noticeParts([`* Vouch for device ${short(key)} as `, [this.session.name], ' in room ',
      [this.session.room], `, for ${days} days; on that device paste it under "I have a vouch ` +
      'from my other device" (in the terminal: --vouch followed by it):']);
    this.notice(B.toBase64(vouch), 'notice key');
  }

  toggleDevices() {
    const view = $('devices-view');
    view.hidden = !view.hidden;
    $('devices-button').setAttribute('aria-expanded', String(!view.hidden));
    if (!view.hidden) {
      $('my-key').textContent = B.toHex(this.session.key);
      $('other-key').focus();
    }
  }

  // --- typing -------------------------------------------------------------------------

  async typed(line) {
    if (!line.trim() || !this.session) return;
    if (line.startsWith('/')) {
      const words = line.trim().split(/\s+/);
      const word = words[0].toLowerCase();
      if (word === '/quit' || word === '/exit') {
        await this.session.leave();
      } else if (word === '/help') {
        for (const h of HELP) this.notice(h);
      } else if (word === '/who') {
        try {
          const everyone = await this.session.who();
          this.noticeParts(['* In the room: ', ...everyone.flatMap((m, i) => [
            i ? ', ' : '', [m.name], m.name === this.session.name ? ' (you)' : ''])]);
        } catch {
          this.notice('! Not connected');
        }
      } else if (word === '/verify' || word === '/accept') {
        if (words.length !== 2) this.notice(`! Usage: ${word} NAME`);
        else if (word === '/verify') await this.verify(words[1]);
        else await this.accept(words[1]);
      } else if (word === '/safety') {
        this.safety();
      } else if (word === '/key') {
        this.notice(`* Your identity key: ${B.toHex(this.session.key)}`, 'notice key');
      } else if (word === '/vouch') {
        if (words.length < 2 || words.length > 3) this.notice('! Cannot vouch: usage: /vouch KEY [DAYS]');
        else await this.vouch(words[1], words[2]);
      } else {
        this.noticeParts(['! Unknown command ', [word], ': type /help']);
      }
      return;
    }
    try {
      this.session.send(line);
    } catch (e) {
      this.notice(`! Not sent: ${e.message}`, 'notice warning');
      return;
    }
    this.message({ sender: this.session.name, text: line, time: Date.now() / 1000, history: false,
      signed: true, trusted: true });
    if (this.session.reconnecting) {
      this.notice(`* Not connected: queued, to be sent after reconnecting (${this.session.pending} waiting).`);
    }
    this.saveSoon();
  }

  // --- the session's events --------------------------------------------------------------

  listener() {
    return {
      messageReceived: (m) => {
        this.message(m);
        this.saveSoon();
      },
      historyUnreadable: (m) => this.message(m, true),
      historyEnd: () => this.endHistory(),
      memberJoined: (m) => {
        this.noticeParts(['* ', [m.name], ` (${m.addr}) entered the room`]);
        this.showMembers();
      },
      memberLeft: (m) => {
        this.noticeParts(['* ', [m.name], ` (${m.addr}) left the room`]);
        if (!this.session.members.length) this.notice('* The room is empty.');
        this.showMembers();
      },
      messageRejected: (sender, reason) =>
        this.noticeParts(['! A message from ', [sender], ' was rejected: ', [reason]], 'notice warning'),
      memberKeyChanged: (name) => {
        this.noticeParts(['!!! WARNING: ', [name], "'s safety number has changed. Someone else may be " +
          'using the name ', [name], '. Their messages are marked until you check the new number (/verify ',
        [name], ') and type /accept ', [name], '.'], 'notice alarm');
        this.showMembers();
      },
      memberNewDevice: (name, key, voucher) => {
        this.noticeParts(['* ', [name], `: new device ${short(key)} (vouched for by `, [name],
          `'s device ${short(voucher)})`]);
        this.showMembers();
      },
      vouchRefused: (name, key, reason) => this.noticeParts(['!!! ', [name], `'s new key ${short(key)} ` +
        'came with a vouch that was not accepted: ', [reason]], 'notice alarm'),
      transcriptAlarm: (a) => this.noticeParts(['!!! ', [a.text]], 'notice alarm'),
      messageUndelivered: (count) => {
        for (let i = 0; i < count; i++) {
          this.notice('! Not sent: the server never acknowledged it (not delivered)', 'notice warning');
        }
      },
      messageRefused: (reason) => this.noticeParts(['! Not sent: refused by the server: ', [reason]], 'notice warning'),
      notice: (text) => this.noticeParts(['! Server: ', [text]]),
      reconnecting: (attempt, delay, reason) => this.reconnecting(attempt, delay, reason),
      reconnected: () => {
        this.stopCountdown();
        const queued = this.session.pending;
        this.noticeParts(['* Reconnected: back in room ', [this.session.room],
          queued ? `; sending ${queued} queued message(s).` : '.']);
        this.connected();
        this.showMembers();
      },
      disconnected: (reason) => this.ended(reason),
      stateChanged: (state) => {
        if (state === 'logging-in') {
          this.stopCountdown();
          this.setState('Logging in again…', 'waiting');
        } else if (state === 'leaving') {
          this.setState('Leaving…', 'waiting');
        }
      },
    };
  }

  reconnecting(attempt, delay, reason) {
    const lead = attempt === 1 ? `* Connection lost: ${reason}. Reconnecting in ${delay.toFixed(1)} s`
      : `* Reconnect attempt ${attempt - 1} failed: ${reason}. Retrying in ${delay.toFixed(1)} s`;
    this.noticeParts([lead.slice(0, 2), [lead.slice(2)], ` (attempt ${attempt})…`]);
    this.stopCountdown();
    const until = Date.now() + delay * 1000;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      this.setState(`Reconnecting in ${left} s (attempt ${attempt}): ${reason}`, 'waiting');
    };
    tick();
    this.countdown = setInterval(tick, 1000);
  }

  connected() {
    const s = this.session;
    this.setState(`Connected to room ${s.room} as ${s.name}`, 'connected');
  }

  ended(reason) {
    this.stopCountdown();
    this.save();
    this.setState(reason === null ? 'Left the room' : `Ended: ${reason}`, 'ended');
    if (reason !== null) this.noticeParts(['Disconnected from chat server: ', [reason]], 'notice alarm');
    $('compose-fields').disabled = true;
    $('rejoin').hidden = false;
  }

  // --- keeping state ----------------------------------------------------------------

  transcriptKey() {
    return this.placeKey(this.session.room, this.session.name);
  }

  saveSoon() {
    if (this.saveTimer === null) {
      this.saveTimer = setTimeout(() => {
        this.saveTimer = null;
        this.save();
      }, 200);
    }
  }

  save() {
    if (!this.session) return;
    this.store.put('transcripts', this.transcriptKey(), this.session.transcript.state()).catch(
      (e) => this.notice(`! Could not save the transcript: ${e.message}`, 'notice warning'));
  }

  // --- joining ---------------------------------------------------------------------------

  /**
   * Join as the form says. `vouchText` is the vouch to present (and keep);
   * when empty, `forgetVouch` says whether the form had read what this
   * device keeps for the room and name (so that an empty field is the
   * person's choice): only then is a kept vouch deleted.
   */
  async join({ room, name, password, keep, vouchText, forgetVouch }) {
    const error = $('join-error');
    error.textContent = '';
    if (this.local) {
      const address = serverAddress($('server').value);
      if (!address) {
        error.textContent = 'Type the chat server\'s address, like chat.example.org:8443.';
        $('server').focus();
        return;
      }
      this.server = address;
    }
    const keptAt = this.placeKey(room, name);
    const kept = password ? null : await this.store.get('kept', keptAt);
    if (!password && !kept) {
      error.textContent = 'Type the room password.';
      $('password').focus();
      return;
    }
    $('join-fields').disabled = true;
    const progress = $('progress');
    progress.hidden = false;
    progress.value = 0;
    this.setState('Deriving the room key from the password…', 'waiting');
    let derived = null;
    const derive = kept
      ? async (_password, salt, params) => {
        if (kept.n !== params.n || kept.r !== params.r || kept.p !== params.p ||
            !equal(kept.salt, salt)) throw new errors.SaltChanged();
        return { w0: kept.w0, w1: kept.w1, contentSecret: kept.contentSecret };
      }
      : async (pw, salt, params, options) => {
        const secrets = await kdf.deriveSecrets(pw, salt, params, options);
        derived = { salt: salt.slice(), n: params.n, r: params.r, p: params.p, ...secrets };
        return secrets;
      };
    const identity = await identityFor(this.store, name);
    let vouch = null;
    if (vouchText) {
      try {
        vouch = B.fromBase64(vouchText.replace(/\s+/g, ''));
        if (vouch === null) throw new RangeError('it is not base64');
        ed.verifyVouch(vouch, room, name, identity.publicKey, Date.now() / 1000);
      } catch (e) {
        error.textContent = `This vouch cannot be used: ${e.message} (it must be made for this ` +
          "device's key, as this name, in this room, and not have expired).";
        this.setState('Not connected', 'ended');
        $('join-fields').disabled = false;
        progress.hidden = true;
        $('vouch').focus();
        return;
      }
      await this.store.put('vouches', keptAt, vouch);
    } else if (forgetVouch) {
      await this.store.delete('vouches', keptAt);
    }
    const state = await this.store.get('transcripts', keptAt);
    let transcript;
    try {
      transcript = state ? new T.Transcript(name, identity.publicKey, state) : undefined;
    } catch {
      transcript = undefined; // a damaged or foreign state: start the chains afresh
    }
    const web = transport.webHello(
      transport.webSocketConnector(`wss://${this.server}/ws`), this.origin);
    const started = performance.now();
    try {
      this.session = await S.login({
        connect: web.connect, binding: web.binding, name, room,
        password: password || '', server: `https://${this.server}`, listener: this.listener(),
        pins: new StoredPins(this.store), identity, vouch, transcript,
        // Another tab of this profile may have spoken under the name meanwhile.
        storedTranscript: () => this.store.get('transcripts', keptAt),
        reconnect: new S.Reconnect(), derive,
        onProgress: (f) => {
          progress.value = f;
          if (f >= 1) this.setState('Logging in…', 'waiting');
        },
      });
    } catch (e) {
      if (kept) await this.store.delete('kept', keptAt);
      error.textContent = `Unable to connect: ${S.describe(e)}`;
      this.setState('Not connected', 'ended');
      $('join-fields').disabled = false;
      progress.hidden = true;
      $('password').value = '';
      $('password').focus();
      return;
    }
    $('password').value = '';
    this.loginSeconds = (performance.now() - started) / 1000;
    document.body.dataset.loginMs = String(Math.round(this.loginSeconds * 1000));
    if (this.local) localStorage.setItem('twistchat.server', this.server);
    if (keep && derived) await this.store.put('kept', keptAt, derived);
    if (!keep && !kept) await this.store.delete('kept', keptAt);
    progress.hidden = true;
    this.enterRoom(identity);
  }

  enterRoom(identity) {
    const s = this.session;
    $('join-view').hidden = true;
    $('chat-view').hidden = false;
    $('room-title').replaceChildren('Room ', isolated(s.room));
    this.connected();
    this.notice('connected — you can start sending messages (/help for commands)');
    if (!s.members.length) this.notice('* The room is empty.');
    else {
      this.noticeParts(['* In the room: ', ...s.members.flatMap((m, i) => [
        i ? ', ' : '', [m.name], ` (${m.addr})`])]);
    }
    if (identity.kind !== 'webcrypto') {
      this.notice('! This browser has no WebCrypto Ed25519: your identity key is kept readable by this page.',
        'notice warning');
    }
    this.showMembers();
    $('message').focus();
    s.ended.then(() => this.save());
  }
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function main() {
  const store = await Store.open();
  const page = new Page(store);
  if (!store.persistent) {
    $('keep-row').hidden = true;
    $('storage-note').textContent = 'This browser keeps nothing for this page: keys last until you close it.';
  }
  if (page.local) {
    $('served-caveat').hidden = true;
    $('local-caveat').hidden = false;
    for (const e of document.querySelectorAll('#server, label[for="server"]')) e.hidden = false;
    $('server').required = true;
    $('server').value = localStorage.getItem('twistchat.server') ?? '';
  }
  const lastRoom = localStorage.getItem('twistchat.room');
  const lastName = localStorage.getItem('twistchat.name');
  if (lastRoom) $('room').value = lastRoom;
  if (lastName) $('name').value = lastName;
  let vouchFrom = null;
  // The form is refreshed from the store when Room, Name (or Server) change:
  // `refreshing` settles once every refresh asked for has ended, one after
  // the other; `shownFor` is the place (room and name, as Join takes them)
  // the last finished refresh read, `askedFor` the last one asked for.
  let refreshing = Promise.resolve();
  let askedFor = null;
  let shownFor = null;
  const keptKey = () => {
    const address = page.local ? serverAddress($('server').value) : page.server;
    if (address) page.server = address;
    return page.placeKey($('room').value.trim(), $('name').value.trim());
  };
  const showKept = async () => {
    const at = keptKey();
    const kept = await store.get('kept', at);
    $('kept-note').hidden = !kept;
    $('forget').hidden = !kept;
    if (kept) $('keep').checked = true;
    // The vouch kept for this room and name fills the field; one typed in
    // stays, unless it was filled in for another room or name.
    const vouch = await store.get('vouches', at);
    if (vouch) {
      $('vouch').value = B.toBase64(vouch);
      vouchFrom = at;
      $('has-vouch').checked = true;
    } else if (vouchFrom !== null && vouchFrom !== at) {
      $('vouch').value = '';
      vouchFrom = null;
      $('has-vouch').checked = false;
    }
    $('vouch-row').hidden = !$('has-vouch').checked;
    shownFor = at;
  };
  const refresh = () => {
    askedFor = keptKey();
    // A refresh that fails leaves the form as it was (and shownFor unset
    // for this place, so that Join deletes nothing kept).
    refreshing = refreshing.then(showKept).catch(() => {});
    return refreshing;
  };
  /** Once the form shows what is kept for the room and name typed in now. */
  const settled = async () => {
    if (askedFor !== keptKey()) refresh();
    let waited;
    do {
      waited = refreshing;
      await waited;
    } while (waited !== refreshing);
  };
  // A key shown is the key of the name typed when it was shown.
  $('name').addEventListener('input', () => {
    $('device-key').hidden = true;
  });
  $('has-vouch').addEventListener('change', () => {
    $('vouch-row').hidden = !$('has-vouch').checked;
    if ($('has-vouch').checked) $('vouch').focus();
  });
  $('show-key').addEventListener('click', async () => {
    const name = $('name').value.trim();
    const shown = $('device-key');
    shown.hidden = false;
    if (!name) {
      shown.textContent = 'Type your name first: this device has a key per name.';
      $('name').focus();
      return;
    }
    const key = B.toHex((await identityFor(store, name)).publicKey);
    shown.textContent = `This device's key as ${name}: ${key}. On your other device, in the room, ` +
      `type /vouch ${key} and paste here the vouch it gives.`;
  });
  $('room').addEventListener('change', refresh);
  $('name').addEventListener('change', refresh);
  $('server').addEventListener('change', refresh);
  await refresh();
  $('forget').addEventListener('click', async () => {
    await store.delete('kept', keptKey());
    await refresh();
    $('password').focus();
  });
  // Join reads the form only once it shows what is kept for the room and
  // name typed (Enter typed right after a name starts a refresh that Join
  // must not overtake); a second Join meanwhile is the same one.
  let joining = false;
  $('join').addEventListener('submit', async (event) => {
    event.preventDefault();
    if (joining) return;
    joining = true;
    try {
      await settled();
      const room = $('room').value.trim();
      const name = $('name').value.trim();
      localStorage.setItem('twistchat.room', room);
      localStorage.setItem('twistchat.name', name);
      const vouchText = $('has-vouch').checked ? $('vouch').value.trim() : '';
      await page.join({ room, name, password: $('password').value, keep: $('keep').checked,
        vouchText, forgetVouch: !vouchText && shownFor === keptKey() });
    } finally {
      joining = false;
    }
  });
  $('compose').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('message');
    const line = input.value;
    input.value = '';
    page.typed(line);
  });
  $('safety-button').addEventListener('click', () => page.safety());
  $('devices-button').addEventListener('click', () => page.toggleDevices());
  $('vouch-form').addEventListener('submit', (event) => {
    event.preventDefault();
    page.vouch($('other-key').value.trim(), $('vouch-days').value.trim());
  });
  $('leave').addEventListener('click', () => page.session && page.session.leave());
  $('compare-close').addEventListener('click', () => $('compare').close());
  $('compare').addEventListener('close', () => $('message').focus());
  $('rejoin').addEventListener('click', () => location.reload());
  window.addEventListener('pagehide', () => page.save());
  // The join form comes disabled (index.html) until now: pressed earlier,
  // Join would send it as a plain GET, the password in the address.
  $('join-fields').disabled = false;
  page.setState('Not connected', 'ended');
  if (page.local && !$('server').value) $('server').focus();
  else if ($('room').value && $('name').value) $('password').focus();
  else $('room').focus();
}

main();

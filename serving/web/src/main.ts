// The index page (/app/): sign-in, then the worklist.

import './styles.css';
import { ApiError, getMe } from './api';
import { clearToken, getToken, safeNext } from './auth';
import { showSignIn } from './signin';
import { ModelsPageView } from './models';
import {
  byId,
  errorText,
  renderPageNav,
  renderUserBar,
  seesModels,
  seesWorklist,
  showAccessDenied,
  showBanner,
} from './ui';
import { WorklistPageView } from './worklist';

const main = byId('main');
const userBar = byId('user-bar');
const pageNav = byId('page-nav');

async function start(): Promise<void> {
  if (!getToken()) {
    userBar.replaceChildren();
    pageNav.replaceChildren();
    showSignIn(main, () => void start());
    return;
  }
  let me;
  try {
    me = await getMe();
  } catch (error) {
    if (error instanceof ApiError && error.unauthorized) {
      clearToken();
      void start();
    } else if (error instanceof ApiError && error.forbidden) {
      showAccessDenied(main, error, null);
    } else {
      showBanner(`Cannot load your account: ${errorText(error)}`);
      window.setTimeout(() => void start(), 5000);
    }
    return;
  }
  renderUserBar(userBar, me);
  const next = safeNext(new URLSearchParams(location.search).get('next'));
  if (next) {
    location.replace(next);
    return;
  }
  // ?page=models: the Models page, for the roles that see it; the worklist otherwise, unless
  // the role sees models only (an ML engineer)
  const wantsModels = new URLSearchParams(location.search).get('page') === 'models';
  const models = seesModels(me) && (wantsModels || !seesWorklist(me));
  renderPageNav(pageNav, me, models ? 'models' : 'worklist');
  if (models) {
    document.title = 'radcloud · models';
    await new ModelsPageView(main, me).start();
    return;
  }
  await new WorklistPageView(main, me).start();
}

void start();
